// bgserve's live dashboard: reads GET /_bgserve/events (Server-Sent
// Events) and shows what it says.  Every value reaches the page through
// textContent, never as markup.
"use strict";
(function () {
  const es = new EventSource("/_bgserve/events");
  const raw = document.getElementById("raw");
  const conn = document.getElementById("conn");
  function show(ev) { raw.textContent = ev.data; }
  es.addEventListener("snapshot", show);
  es.addEventListener("update", show);
  es.onopen = function () { conn.textContent = "live"; };
  es.onerror = function () { conn.textContent = "reconnecting"; };
})();
