//! A live engine behind the service, over real sockets: each request is decided with the limits
//! current when it arrives, and a reload keeps what was spent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use tollgate::Config;
use tollgate_warp::{LiveEngine, RateLimit};
use warp::Filter;

use support::{get_from, start};

fn config(quota: &str) -> Config {
    format!(
        "[policies.api]\nlimits = [{{ name = \"per_ip\", quota = \"{quota}\", algorithm = \"fixed_window\" }}]\n\
         [[routes]]\npath = \"/hello\"\npolicy = \"api\"\n"
    )
    .parse()
    .unwrap()
}

#[tokio::test]
async fn a_reload_reaches_the_next_request_and_keeps_what_was_spent() {
    let live = LiveEngine::from_config(config("3/h")).unwrap();
    let limits = RateLimit::with_engine(live.clone());
    let addr = start(&limits, warp::path("hello").map(|| "hello")).await;
    for _ in 0..2 {
        assert_eq!(get_from("127.0.0.1", addr, "/hello", "").await.status, 200);
    }
    live.reload(config("5/h")).unwrap();
    for _ in 0..3 {
        assert_eq!(get_from("127.0.0.1", addr, "/hello", "").await.status, 200);
    }
    let refused = get_from("127.0.0.1", addr, "/hello", "").await;
    assert_eq!((refused.status, refused.header("x-ratelimit-limit")), (429, Some("5")));
    // Tightened below what was spent: refused until the window passes.
    live.reload(config("4/h")).unwrap();
    assert_eq!(get_from("127.0.0.1", addr, "/hello", "").await.status, 429);
    assert!(live.update(|c| c.routes[0].policy = Some("gone".into())).is_err());
    let still = get_from("127.0.0.1", addr, "/hello", "").await;
    assert_eq!((still.status, still.header("x-ratelimit-limit")), (429, Some("4")));
}
