/* dashboard.h: the web page behind GET /dashboard.
 *
 * The page (gateway/dashboard/: index.html, app.js, style.css) and uPlot,
 * which draws its charts, are compiled into the binary (embed.cmake), so a
 * deployed cascaded serves them with nothing installed beside it. Paths:
 *   /dashboard, /dashboard/, /dashboard/index.html    the page
 *   /dashboard/app.js, /dashboard/style.css           its code and style
 *   /dashboard/uplot.min.js, /dashboard/uplot.min.css uPlot 1.6.32 (MIT,
 *                                                     third_party/uplot/LICENSE)
 * The files themselves hold no data and need no auth: the page asks for a
 * token and calls GET /admin/v1/stats with it (see policies/stats.h for that
 * JSON). Responses carry no-cache (a new binary brings new files) and a
 * Content-Security-Policy allowing only this origin.
 *
 * Threads: any; the assets are read-only.
 */
#ifndef CASCADE_DASHBOARD_H
#define CASCADE_DASHBOARD_H

struct httpd_req;

/* Answer r when path is one of ours: 0 when it is not (r untouched), else
 * the status sent (200, or 405 for a method other than GET) after
 * httpd_reply, which releases r. */
int dashboard_serve(struct httpd_req *r, const char *path);

#endif
