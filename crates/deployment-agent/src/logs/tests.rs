use std::time::Duration;

use futures_util::StreamExt;

use super::*;

fn query(pairs: &[(&str, &str)]) -> Result<LogsRequest, String> {
    let params: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    parse(&params)
}

#[test]
fn defaults_and_bounds_of_tail() {
    let plain = query(&[]).unwrap();
    assert_eq!(
        plain,
        LogsRequest {
            query: LogQuery {
                tail: DEFAULT_TAIL,
                since_ms: None,
                follow: false
            },
            grep: None,
        }
    );
    assert_eq!(query(&[("tail", "0")]).unwrap().query.tail, 0);
    assert_eq!(query(&[("tail", "10000")]).unwrap().query.tail, MAX_TAIL);
    for bad in ["10001", "-1", "ten", "1.5", "99999999999999999999999"] {
        let message = query(&[("tail", bad)]).unwrap_err();
        assert!(
            message.contains("tail") && message.contains(bad),
            "{message}"
        );
    }
    // With grep, the matching lines among the last MAX_TAIL unless tail says otherwise.
    assert_eq!(query(&[("grep", "id-1")]).unwrap().query.tail, MAX_TAIL);
    assert_eq!(
        query(&[("grep", "id-1"), ("tail", "5")])
            .unwrap()
            .query
            .tail,
        5
    );
}

#[test]
fn since_takes_seconds_milliseconds_and_rfc3339() {
    assert_eq!(parse_since("1704110400"), Some(1_704_110_400_000));
    assert_eq!(parse_since("1704110400123"), Some(1_704_110_400_123));
    assert_eq!(parse_since("0"), Some(0));
    assert_eq!(parse_since("2024-01-01T12:00:00Z"), Some(1_704_110_400_000));
    assert_eq!(
        parse_since("2024-01-01T12:00:00.250Z"),
        Some(1_704_110_400_250)
    );
    assert_eq!(
        parse_since("2024-01-01T14:00:00+02:00"),
        Some(1_704_110_400_000)
    );
    assert_eq!(
        parse_since("2024-01-01T10:30:00-01:30"),
        Some(1_704_110_400_000)
    );
    for bad in [
        "yesterday",
        "-5",
        "1.5",
        "2024-01-01",
        "2024-13-01T00:00:00Z",
        "2024-01-01T12:00:00+25:00",
        "18446744073709551616",
    ] {
        assert_eq!(parse_since(bad), None, "{bad}");
    }
    let message = query(&[("since", "soon")]).unwrap_err();
    assert!(
        message.contains("since") && message.contains("soon"),
        "{message}"
    );
    assert_eq!(
        query(&[("since", "1704110400")]).unwrap().query.since_ms,
        Some(1_704_110_400_000)
    );
}

#[test]
fn follow_and_grep() {
    assert!(query(&[("follow", "true")]).unwrap().query.follow);
    assert!(query(&[("follow", "1")]).unwrap().query.follow);
    assert!(!query(&[("follow", "false")]).unwrap().query.follow);
    assert!(query(&[("follow", "yes")]).unwrap_err().contains("follow"));
    assert_eq!(query(&[("grep", "")]).unwrap().grep, None);
    let longest = "g".repeat(MAX_GREP_BYTES);
    assert_eq!(
        query(&[("grep", &longest)]).unwrap().grep.as_deref(),
        Some(longest.as_str())
    );
    let message = query(&[("grep", &"g".repeat(MAX_GREP_BYTES + 1))]).unwrap_err();
    assert!(message.contains("grep"), "{message}");
    // Unknown parameters (a cache buster) are ignored.
    assert!(query(&[("_", "123")]).is_ok());
}

fn line(text: &str) -> LogLine {
    LogLine {
        at_ms: Some(1),
        stream: "stderr",
        line: text.to_owned(),
    }
}

async fn body_text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn ndjson_filters_by_grep_one_object_per_line() {
    let lines = futures_util::stream::iter(vec![line("a req-1 x"), line("b"), line("req-1 \"q\"")]);
    let response = ndjson(
        lines.boxed(),
        Some("req-1".into()),
        Duration::from_secs(5),
        common::CancellationToken::new(),
    );
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/x-ndjson"
    );
    let text = body_text(response).await;
    let parsed: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 2, "{text}");
    assert_eq!(parsed[0]["line"], "a req-1 x");
    assert_eq!(parsed[1]["line"], "req-1 \"q\"");
    assert_eq!(parsed[1]["stream"], "stderr");
    assert_eq!(parsed[1]["at_ms"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_follow_ends_at_its_limit_and_at_shutdown() {
    // A stream that never ends by itself (a follow of a quiet container).
    let endless = || {
        futures_util::stream::iter(vec![line("first")])
            .chain(futures_util::stream::pending())
            .boxed()
    };
    let response = ndjson(
        endless(),
        None,
        Duration::from_secs(300),
        common::CancellationToken::new(),
    );
    let text = tokio::time::timeout(Duration::from_secs(301), body_text(response))
        .await
        .expect("the follow did not end at its limit");
    assert!(text.contains("first"), "{text}");

    let shutdown = common::CancellationToken::new();
    let response = ndjson(endless(), None, Duration::from_secs(300), shutdown.clone());
    let reading = tokio::spawn(body_text(response));
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.cancel();
    let text = tokio::time::timeout(Duration::from_secs(1), reading)
        .await
        .expect("the follow did not end at shutdown")
        .unwrap();
    assert!(text.contains("first"), "{text}");
}
