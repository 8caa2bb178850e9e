use std::time::Duration;

use super::*;

fn submit(body: &str) -> Result<Job, String> {
    parse_submit(body.as_bytes(), &Config::default())
}

#[test]
fn submit_accepts_every_operation() {
    assert_eq!(
        submit(r#"{"operation":"monte_carlo_pi","data":{"iterations":1000000}}"#),
        Ok(Job::MonteCarloPi {
            iterations: 1_000_000
        })
    );
    assert_eq!(
        submit(r#"{"operation":"monte_carlo_pi","data":{"iterations":1e6}}"#),
        Ok(Job::MonteCarloPi {
            iterations: 1_000_000
        })
    );
    assert_eq!(
        submit(r#"{"operation":"primes","data":{"limit":100}}"#),
        Ok(Job::Primes { limit: 100 })
    );
    assert_eq!(
        submit(r#"{"operation":"sleep","data":{"seconds":0.5}}"#),
        Ok(Job::Sleep {
            duration: Duration::from_millis(500)
        })
    );
}

#[test]
fn submit_errors_name_the_problem() {
    let cases = [
        ("{", "malformed JSON"),
        ("[1]", "JSON object"),
        (r#"{"data":{}}"#, "missing field `operation`"),
        (r#"{"operation":7}"#, "`operation` must be a string"),
        (
            r#"{"operation":"fib","data":{}}"#,
            "unknown operation `fib`",
        ),
        (
            r#"{"operation":"monte_carlo_pi","data":5}"#,
            "`data` must be an object",
        ),
        (
            r#"{"operation":"monte_carlo_pi","data":{}}"#,
            "missing field `data.iterations`",
        ),
        (
            r#"{"operation":"monte_carlo_pi","data":{"iterations":"many"}}"#,
            "`data.iterations` must be an integer",
        ),
        (
            r#"{"operation":"monte_carlo_pi","data":{"iterations":0}}"#,
            "`data.iterations` must be an integer from 1",
        ),
        (
            r#"{"operation":"monte_carlo_pi","data":{"iterations":1.5}}"#,
            "`data.iterations`",
        ),
        (
            r#"{"operation":"monte_carlo_pi","data":{"iterations":-3}}"#,
            "`data.iterations`",
        ),
        (
            r#"{"operation":"monte_carlo_pi","data":{"iterations":99999999999999}}"#,
            "to 10000000000",
        ),
        (
            r#"{"operation":"primes","data":{"limit":true}}"#,
            "`data.limit`",
        ),
        (
            r#"{"operation":"sleep","data":{"seconds":1000}}"#,
            "`data.seconds` must be a number from 0 to 120",
        ),
        (
            r#"{"operation":"sleep","data":{}}"#,
            "missing field `data.seconds`",
        ),
    ];
    for (body, expected) in cases {
        let err = submit(body).unwrap_err();
        assert!(err.contains(expected), "{body}: {err:?} lacks {expected:?}");
    }
    let unknown = submit(r#"{"operation":"fib"}"#).unwrap_err();
    for op in OPERATIONS {
        assert!(unknown.contains(op), "{unknown:?} does not list {op}");
    }
}

#[test]
fn intensity_bodies_and_paths() {
    assert_eq!(parse_intensity_body(b"", 10), Ok(1));
    assert_eq!(parse_intensity_body(b"{}", 10), Ok(1));
    assert_eq!(parse_intensity_body(br#"{"intensity":7}"#, 10), Ok(7));
    assert!(
        parse_intensity_body(br#"{"intensity":11}"#, 10)
            .unwrap_err()
            .contains("from 1 to 10")
    );
    assert!(
        parse_intensity_body(br#"{"intensity":"x"}"#, 10)
            .unwrap_err()
            .contains("intensity")
    );
    assert!(
        parse_intensity_body(b"not json", 10)
            .unwrap_err()
            .contains("malformed JSON")
    );
    assert_eq!(parse_intensity_path("3", 10), Ok(3));
    for bad in ["0", "11", "-1", "abc", ""] {
        assert!(parse_intensity_path(bad, 10).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn weights_scale_the_work() {
    assert_eq!(Weight::Normal.iterations(3, 100), 300);
    assert_eq!(Weight::Heavy.iterations(3, 100), 3_000);
    assert_eq!(Weight::Light.iterations(3, 100), 30);
    assert_eq!(Weight::Light.iterations(1, 1), 1);
}

#[test]
fn request_ids_are_short_and_plain_or_ignored() {
    assert_eq!(request_id(b"req-1.a_b:C"), Some("req-1.a_b:C"));
    let longest = "a".repeat(common::request_id::MAX_LEN);
    assert_eq!(request_id(longest.as_bytes()), Some(longest.as_str()));
    assert_eq!(
        request_id("a".repeat(common::request_id::MAX_LEN + 1).as_bytes()),
        None
    );
    for bad in [
        &b""[..],
        b"a b",
        b"a\nb",
        b"a\x1b[31m",
        b"caf\xc3\xa9",
        b"a/b",
        b"a\"b",
    ] {
        assert_eq!(request_id(bad), None, "{bad:?}");
    }
}
