/*
 * crashpage.c - renders the crash page (see crashpage.h).
 *
 * Everything from the report is HTML-escaped (& < > " '), the style is
 * inline and nothing is fetched from elsewhere, so the page shows the
 * same offline and cannot be turned into markup by what a plugin logged
 * or named.
 */
#include "crashpage.h"

#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int crashpage_wants_html(const char *accept)
{
    if (accept == NULL)
        return 0;
    for (const char *p = accept; (p = strchr(p, 't')) != NULL; p++)
        if (strncasecmp(p, "text/html", 9) == 0)
            return 1;
    return 0;
}

static void escape(FILE *o, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", o); break;
        case '<': fputs("&lt;", o); break;
        case '>': fputs("&gt;", o); break;
        case '"': fputs("&quot;", o); break;
        case '\'': fputs("&#39;", o); break;
        default: fputc(*s, o); break;
        }
    }
}

char *crashpage_render(const char *report, const char *plugin_path, int html,
                       size_t *len, const char **ctype)
{
    char *body = NULL;
    size_t n = 0;
    FILE *o = open_memstream(&body, &n);
    if (o == NULL) {
        *ctype = "text/plain; charset=utf-8";
        body = xstrdup("500 Internal Server Error: the plugin crashed\n");
        *len = strlen(body);
        return body;
    }
    const char *headline = "the plugin crashed and is not restarted until the next build";
    if (!html) {
        *ctype = "text/plain; charset=utf-8";
        fprintf(o, "500 Internal Server Error: %s (%s)\n"
                "Save a fix: bgserve rebuilds and this page goes away.\n\n%s",
                headline, plugin_path, report ? report : "");
    } else {
        *ctype = "text/html; charset=utf-8";
        fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
              "<title>bgserve: plugin crashed</title>\n<style>"
              "body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#1e1e1e;color:#eee}"
              "header{background:#b3261e;color:#fff;padding:14px 22px}"
              "h1{font-size:18px;margin:0}main{padding:18px 22px}"
              "pre{background:#111;padding:14px;overflow:auto;font:13px/1.45 ui-monospace,"
              "monospace;white-space:pre-wrap}"
              "</style></head>\n<body><header><h1>500 &middot; ", o);
        escape(o, headline);
        fputs("</h1></header>\n<main><p>Plugin <code>", o);
        escape(o, plugin_path ? plugin_path : "");
        fputs("</code>. Save a fix: bgserve rebuilds it and this page goes away "
              "(reload the page).</p>\n<pre>", o);
        escape(o, report ? report : "");
        fputs("</pre></main></body></html>\n", o);
    }
    fclose(o);
    *len = n;
    return body;
}
