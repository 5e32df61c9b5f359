/* dashboard.c: see dashboard.h. The arrays come from the generated
 * dashboard_assets.c (gateway/dashboard/embed.cmake). */
#include "gateway/dashboard.h"

#include <stddef.h>
#include <string.h>

#include "common/httpd.h"

extern const unsigned char dashboard_index_html[], dashboard_app_js[], dashboard_style_css[], dashboard_uplot_js[],
    dashboard_uplot_css[];
extern const size_t dashboard_index_html_len, dashboard_app_js_len, dashboard_style_css_len, dashboard_uplot_js_len,
    dashboard_uplot_css_len;

struct asset {
    const char *path;               /* after "/dashboard" */
    const char *type;
    const unsigned char *data;
    const size_t *len;
};

static const struct asset assets[] = {
    {"", "text/html; charset=utf-8", dashboard_index_html, &dashboard_index_html_len},
    {"/", "text/html; charset=utf-8", dashboard_index_html, &dashboard_index_html_len},
    {"/index.html", "text/html; charset=utf-8", dashboard_index_html, &dashboard_index_html_len},
    {"/app.js", "text/javascript; charset=utf-8", dashboard_app_js, &dashboard_app_js_len},
    {"/style.css", "text/css; charset=utf-8", dashboard_style_css, &dashboard_style_css_len},
    {"/uplot.min.js", "text/javascript; charset=utf-8", dashboard_uplot_js, &dashboard_uplot_js_len},
    {"/uplot.min.css", "text/css; charset=utf-8", dashboard_uplot_css, &dashboard_uplot_css_len},
};

/* Scripts and styles from this origin only; the favicon is a data: URL.
 * uPlot sets element styles from script, hence 'unsafe-inline' for styles. */
#define CSP "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " \
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

int dashboard_serve(struct httpd_req *r, const char *path)
{
    if (!path || strncmp(path, "/dashboard", 10) != 0)
        return 0;
    const char *rest = path + 10;
    const struct asset *a = NULL;
    for (size_t i = 0; i < sizeof assets / sizeof *assets; i++)
        if (strcmp(assets[i].path, rest) == 0)
            a = &assets[i];
    if (!a)
        return 0; /* /dashboardx, /dashboard/nope: the router's 404 */
    /* GET only: HEAD would need a reply without its body, which httpd does
     * not make. */
    if (strcmp(httpd_req_method(r), "GET") != 0) {
        httpd_resp_header(r, "Allow", "GET");
        httpd_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL, "Method not allowed; use GET");
        return 405;
    }
    /* No validators (ETag, 304): the files are ~60 KB in all and change only
     * with the binary, so refetching on load is cheaper than being stale. */
    httpd_resp_header(r, "Cache-Control", "no-cache");
    httpd_resp_header(r, "X-Content-Type-Options", "nosniff");
    /* The page may carry ?token= until its script removes it: never send it on. */
    httpd_resp_header(r, "Referrer-Policy", "no-referrer");
    if (strncmp(a->type, "text/html", 9) == 0) {
        httpd_resp_header(r, "Content-Security-Policy", CSP);
        httpd_resp_header(r, "X-Frame-Options", "DENY");
    }
    httpd_reply(r, 200, a->type, (const char *)a->data, *a->len);
    return 200;
}
