//! A live engine behind the middleware, over real sockets: every worker decides with the limits
//! current when a request arrives, and a reload keeps what was spent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use actix_web::{App, HttpResponse, web};
use tollgate::Config;
use tollgate_actix::{LiveEngine, RateLimit};

use common::get;

fn config(quota: &str) -> Config {
    format!(
        "[policies.api]\nlimits = [{{ name = \"per_ip\", quota = \"{quota}\", algorithm = \"fixed_window\" }}]\n\
         [[routes]]\npath = \"/\"\npolicy = \"api\"\n"
    )
    .parse()
    .unwrap()
}

#[actix_web::test]
async fn two_workers_follow_a_reload_and_keep_what_was_spent() {
    let live = LiveEngine::from_config(config("3/h")).unwrap();
    let limit = RateLimit::with_engine(live.clone());
    let server = serve!(2, move || {
        App::new().wrap(limit.clone()).route("/", web::get().to(|| async { HttpResponse::Ok().body("hello") }))
    });
    for _ in 0..2 {
        assert_eq!(get(server.addr, "/", "").await.status, 200);
    }
    // 2 spent of 3; raised to 5, three more on whichever worker answers.
    live.reload(config("5/h")).unwrap();
    let statuses: Vec<u16> = futures_util::future::join_all((0..4).map(|_| get(server.addr, "/", "")))
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    let refused = get(server.addr, "/", "").await;
    assert_eq!((refused.status, refused.header("x-ratelimit-limit").as_deref()), (429, Some("5")));
    // A broken configuration is refused; the workers keep deciding with the running one.
    assert!(live.update(|c| c.routes[0].policy = Some("gone".into())).is_err());
    assert_eq!(get(server.addr, "/", "").await.status, 429);
    server.stop().await;
}
