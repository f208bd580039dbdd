//! Errors as RFC 9457 `application/problem+json`: a stable `type` per kind of error, a `title`,
//! the HTTP status, and a `detail` that says what is wrong with this request. warp's own
//! rejections that we know are mapped to theirs (a catch-all would turn 405, 411 and 415 into
//! 500); the rest pass through untouched.

use std::convert::Infallible;
use warp::http::StatusCode;
use warp::reject::Reject;
use warp::{Rejection, Reply};

/// Base of every problem `type`: a stable identifier, documented in README.
pub const TYPE_BASE: &str = "https://ipfixsvc.dev/problems/";

/// An RFC 9457 problem: `type` is stable (one per kind of error), `detail` says what is wrong
/// with this request.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = String)]
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, title: &'static str, detail: String) -> Problem {
        Problem {
            kind: format!("{TYPE_BASE}{kind}"),
            title,
            status: status.as_u16(),
            detail,
        }
    }

    pub fn unauthorized(detail: &str) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or wrong bearer token",
            detail.to_string(),
        )
    }

    pub fn not_found(detail: String) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// The actors behind the request did not answer in time.
    pub fn unavailable(detail: String) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The node could not answer in time",
            detail,
        )
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl Reject for Problem {}

impl Reply for Problem {
    fn into_response(self) -> warp::reply::Response {
        let status = self.status();
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = warp::reply::Response::new(body.into());
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("application/problem+json"),
        );
        if unauthorized {
            h.insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// Turns the rejections we know into problems; others stay rejections (warp answers them).
pub async fn recover(r: Rejection) -> Result<Problem, Rejection> {
    if let Some(p) = r.find::<Problem>() {
        return Ok(p.clone());
    }
    if r.is_not_found() {
        return Ok(Problem::not_found("no such route".into()));
    }
    let known = if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        Some((
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Request body too large",
            "the body is larger than this route takes".to_string(),
        ))
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        Some((
            StatusCode::LENGTH_REQUIRED,
            "length-required",
            "Content-Length required",
            "send the body's length".to_string(),
        ))
    } else if r.find::<warp::reject::UnsupportedMediaType>().is_some() {
        Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "this route does not take that content type".to_string(),
        ))
    } else if let Some(e) = r.find::<warp::filters::body::BodyDeserializeError>() {
        Some((
            StatusCode::BAD_REQUEST,
            "bad-json",
            "The JSON body cannot be read",
            e.to_string(),
        ))
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        Some((
            StatusCode::BAD_REQUEST,
            "bad-query",
            "Bad query string",
            e.to_string(),
        ))
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        Some((
            StatusCode::BAD_REQUEST,
            "bad-header",
            "Bad header",
            e.to_string(),
        ))
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        // Last: any route of the same path with another method says this, whatever was wrong.
        Some((
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this route does not take that method".to_string(),
        ))
    } else {
        r.find::<warp::reject::MissingHeader>().map(|e| {
            (
                StatusCode::BAD_REQUEST,
                "bad-header",
                "Missing header",
                e.to_string(),
            )
        })
    };
    match known {
        Some((status, kind, title, detail)) => Ok(Problem::new(status, kind, title, detail)),
        None => Err(r),
    }
}

/// The query string as `T`, or 400 naming what is wrong with it (a parameter that is unknown,
/// misspelt or not a number...), where warp's own filter says only "Invalid query string".
pub fn query<T: serde::de::DeserializeOwned + Send + 'static>()
-> impl warp::Filter<Extract = (T,), Error = Rejection> + Clone {
    use warp::Filter;
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|q: String| async move {
            serde_urlencoded::from_str::<T>(&q).map_err(|e| bad_query(e.to_string()))
        })
}

/// For handlers: a problem as the error of a route.
/// 400 for a query parameter out of its range.
pub fn bad_query(detail: String) -> Rejection {
    reject(Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-query",
        "Bad query string",
        detail,
    ))
}

/// A page size from `?limit=` (default 100, 1 to 1000), or 400.
pub fn page_limit(limit: Option<u16>) -> Result<usize, Rejection> {
    let limit = usize::from(limit.unwrap_or(100));
    if !(1..=1000).contains(&limit) {
        return Err(bad_query(format!("limit must be 1 to 1000, not {limit}")));
    }
    Ok(limit)
}

pub fn reject(p: Problem) -> Rejection {
    warp::reject::custom(p)
}

/// For filters that must not fail.
pub async fn never(r: Rejection) -> Result<Problem, Infallible> {
    Ok(recover(r).await.unwrap_or_else(|r| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            format!("{r:?}"),
        )
    }))
}
