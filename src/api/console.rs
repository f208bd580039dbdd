//! The web console: `GET /` and its script and style sheet, built into the binary (no separate
//! build step, nothing to install beside it). The page signs in with a token and then talks to
//! the same API as any client (`assets/console/app.js`); these routes need no token, since they
//! serve only the same static files to everyone.

use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use warp::{Filter, Rejection, Reply};

const INDEX: &str = include_str!("../../assets/console/index.html");
const APP_JS: &str = include_str!("../../assets/console/app.js");
const APP_CSS: &str = include_str!("../../assets/console/app.css");

/// Only this origin's script, styles and API; charts are `blob:` URLs made by the script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> warp::reply::Response {
    let mut r = warp::reply::Response::new(body.into());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A new version of the node serves a new console at once.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

pub fn routes() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| asset(INDEX, "text/html; charset=utf-8"));
    let files =
        warp::path!("console" / String)
            .and(warp::get())
            .and_then(|file: String| async move {
                match file.as_str() {
                    "app.js" => Ok(asset(APP_JS, "text/javascript; charset=utf-8")),
                    "app.css" => Ok(asset(APP_CSS, "text/css; charset=utf-8")),
                    _ => Err(super::problem::reject(super::problem::Problem::not_found(
                        format!("the console has no file {file:?} (it has app.js and app.css)"),
                    ))),
                }
            });
    index.or(files).unify().map(Reply::into_response)
}
