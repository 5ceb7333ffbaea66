//! Every parser that reads outside input, fed arbitrary and near-valid input (proptest; a bounded
//! number of cases, so the suite's time stays bounded; failing cases are kept in
//! `tests/fuzz.proptest-regressions`, the corpus). Invariants: no panic, nothing allocated
//! beyond the input's size, and a parse/print round trip where one exists (issue 22, item 10).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use tollgate::config::Config;
use tollgate::engine::Engine;
use tollgate::key::{MAX_KEY_BYTES, group_ip};
use tollgate::websocket::{Classifier, JsonFieldClassifier};
use tollgate::{ClientIpResolver, ForwardingHeader, Key, Quota};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2_000, ..ProptestConfig::default() }
}

/// Text near the quota grammar: `N/[M]unit [burst B]` with sizes and odd spacing, or pieces of
/// it in any order with some noise.
fn quota_text() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec![
        "s", "sec", "ms", "min", "m", "h", "hour", "d", "day", "w", "ns", "us", "µs", "x", "",
    ]);
    let size = prop::sample::select(vec!["", "", "", "B", "KiB", "MiB", "GiB", "KB", "kb", "TiB"]);
    let number = prop_oneof!["[0-9]{1,3}", "[0-9]{1,25}", Just("0".to_owned())];
    let well_formed =
        (number.clone(), size, prop::option::of(number.clone()), unit, prop::option::of(number.clone()), " {0,2}")
            .prop_map(|(n, size, per, unit, burst, pad)| {
                let per = per.unwrap_or_default();
                let burst = burst.map(|b| format!(" burst {b}")).unwrap_or_default();
                format!("{pad}{n}{size}/{per}{unit}{burst}{pad}")
            });
    let piece = prop_oneof![
        number,
        Just("/".to_owned()),
        Just(" ".to_owned()),
        Just("burst".to_owned()),
        Just(".".to_owned()),
        any::<char>().prop_map(String::from),
    ];
    prop_oneof![3 => well_formed, 1 => prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())]
}

/// A TOML document near the config's shape, with arbitrary values in its fields.
fn config_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        quota_text().prop_map(|q| format!("{q:?}")),
        "[a-z:/{}*_ .-]{0,20}".prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("[]".to_owned()),
        Just("true".to_owned()),
    ];
    let field = prop::sample::select(vec![
        "path",
        "methods",
        "policy",
        "max_body",
        "body_bytes",
        "key",
        "concurrent_per_key",
        "connections",
        "messages",
        "key_messages",
        "bytes",
        "max_message",
        "on_exceed",
        "quota",
    ]);
    let line = (field, value).prop_map(|(f, v)| format!("{f} = {v}\n"));
    let section = prop::sample::select(vec!["[[routes]]\n", "[[websocket]]\n", "[store]\n", "[policies.p]\n"]);
    prop::collection::vec((section, prop::collection::vec(line, 0..5)), 0..4).prop_map(|sections| {
        let mut text = String::from("[policies.p0]\nlimits = [{ name = \"l\", quota = \"5/s\", key = \"ip\" }]\n");
        for (s, lines) in sections {
            text.push_str(s);
            text.extend(lines);
        }
        text
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn quota_text_parses_or_errors_and_round_trips(text in prop_oneof![quota_text(), any::<String>()]) {
        if let Ok(quota) = text.parse::<Quota>() {
            let printed = quota.to_string();
            prop_assert_eq!(printed.parse::<Quota>().ok(), Some(quota), "{} printed as {}", text, printed);
        }
    }

    #[test]
    fn config_text_parses_or_names_what_is_wrong(text in prop_oneof![config_text(), any::<String>()]) {
        match text.parse::<Config>() {
            Ok(config) => {
                // A config that validates builds: its routes, its engine, its policies.
                prop_assert!(config.route_limits().is_ok(), "{}", text);
                prop_assert!(Engine::from_config(&config).is_ok());
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }

    #[test]
    fn forwarding_headers_of_any_bytes_resolve_to_an_address_they_name_or_the_peer(
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
        peer_last in 0u8..3,
    ) {
        let resolver = ClientIpResolver::new()
            .trust("10.0.0.0/8".parse().unwrap())
            .headers([ForwardingHeader::Forwarded, ForwardingHeader::XForwardedFor, ForwardingHeader::XRealIp]);
        let peer: IpAddr = [10, 0, 0, peer_last].into();
        for name in ["forwarded", "x-forwarded-for", "x-real-ip"] {
            let mut headers = HeaderMap::new();
            let mut text = String::new();
            for v in &values {
                if let Ok(value) = HeaderValue::from_bytes(v) {
                    text.push_str(&String::from_utf8_lossy(v));
                    headers.append(HeaderName::from_static(name), value);
                }
            }
            let ip = resolver.resolve(peer, &headers);
            // The answer is the peer, or an address the header carries (its text, in some form).
            let named = ip == peer || ip.is_ipv4() && text.contains(&ip.to_string()) || ip.is_ipv6();
            prop_assert!(named, "{} from {:?}", ip, text);
        }
    }

    #[test]
    fn ipv6_prefixes_of_any_length_group_within_the_address(bits in any::<u128>(), prefix in any::<u8>()) {
        let ip = IpAddr::V6(bits.into());
        let grouped = group_ip(ip, prefix);
        if let (IpAddr::V6(g), IpAddr::V6(orig)) = (grouped, ip) {
            let keep = u32::from(prefix.min(128));
            let mask = if keep == 0 { 0 } else { u128::MAX << (128 - keep) };
            prop_assert_eq!(g.to_bits(), orig.to_bits() & mask);
        }
    }

    #[test]
    fn header_values_as_keys_are_bounded_and_stable(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let key = Key::Bytes(&bytes);
        let mut name = Vec::new();
        key.encode(&mut name);
        prop_assert!(name.len() <= 1 + 3 + 1 + MAX_KEY_BYTES, "{} bytes", name.len());
        prop_assert!(key.matches(&key.to_owned_key()));
        prop_assert!(key.bounded().matches(&key.to_owned_key()));
        let mut again = Vec::new();
        key.bounded().encode(&mut again);
        prop_assert_eq!(name, again);
    }

    #[test]
    fn classification_follows_what_a_parser_reads(text in prop_oneof![
        any::<String>(),
        "[ {}\":,a-z\\\\0-9_\\[\\]]{0,40}",
        ("[a-z_]{0,3}", prop::sample::select(vec!["action", "\\u0061ction", "act\\u0069on"]), prop::sample::select(vec!["catch_up", "catch\\u005fup", "say"]))
            .prop_map(|(pad, k, v)| format!("{{\"{pad}\":1,\"{k}\":\"{v}\"}}")),
    ]) {
        let classifier = JsonFieldClassifier::new("action", ["catch_up"]);
        let kind = classifier.classify(&text);
        // Whatever a JSON parser keeps of a duplicated key (serde_json keeps the last), a
        // `catch_up` it reads is counted.
        if let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(&text)
            && object.get("action").and_then(|v| v.as_str()) == Some("catch_up")
        {
            prop_assert_eq!(kind, Some("catch_up"), "{}", text);
        }
        if serde_json::from_str::<serde_json::Value>(&text).is_err() {
            prop_assert_eq!(kind, None, "not JSON: {}", text);
        }
    }
}
