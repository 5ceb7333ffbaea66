//! Run with: cargo run -p core-example
//!
//! A client sends 15 requests at once, then one every 100 ms, against a `per_ip` limit of 5 per
//! second with a burst of 10; each decision is printed with the headers a server would send.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use tollgate::{HeaderOptions, KeyKind, Limit, Policy, RequestKeys};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tollgate::Error> {
    let policy =
        Policy::builder("demo").limit(Limit::new("per_ip", "5/s burst 10".parse()?).key(KeyKind::ip())).build()?;
    let keys = RequestKeys { ip: Some([192, 0, 2, 1].into()), ..RequestKeys::default() };
    let options = HeaderOptions { ietf: true, ..HeaderOptions::default() };
    for i in 1..=20 {
        let decision = policy.check(&keys, 1).await?;
        let mut headers = http::HeaderMap::new();
        options.render(&decision, &mut headers);
        let shown: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect();
        println!("#{i:>2} {} {}", decision.status().as_u16(), shown.join(", "));
        if i >= 15 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
