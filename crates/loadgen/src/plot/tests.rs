use super::*;

fn records(label_offset: f64) -> Vec<RequestRecord> {
    (0..600)
        .map(|i| {
            let due_s = f64::from(i) * 0.01;
            RequestRecord {
                id: u64::from(i as u32),
                path: "/work".into(),
                intensity: 1,
                due_s,
                unix_ms: 1_700_000_000_000 + (due_s * 1e3) as u64,
                lateness_ms: 0.2,
                latency_ms: 5.0 + label_offset + f64::from(i % 50),
                status: if i % 97 == 0 { 503 } else { 200 },
                backend: ["w1", "w2", "w3"][i as usize % 3].into(),
                error: if i % 97 == 0 {
                    "status 503".into()
                } else {
                    String::new()
                },
                service_ms: None,
            }
        })
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-plot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn writes_every_chart_as_png_and_svg() {
    let dir = temp_dir("all");
    let agent = vec![
        AgentSample {
            unix_ms: 1_700_000_000_000,
            containers: 1,
            categories: Some([0, 1, 0, 0, 0]),
        },
        AgentSample {
            unix_ms: 1_700_000_003_000,
            containers: 2,
            categories: Some([1, 0, 0, 1, 0]),
        },
    ];
    let runs = vec![
        ("round-robin".to_owned(), records(0.0)),
        ("p2c-ewma".to_owned(), records(-2.0)),
    ];
    let options = PlotOptions {
        out_dir: dir.clone(),
        bucket: Duration::from_millis(500),
        title: Some("test".into()),
        agent,
    };
    let written = plot(&runs, &options).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for chart in [
        "latency",
        "throughput",
        "workers",
        "runs",
        "containers",
        "timeline",
    ] {
        for ext in ["png", "svg"] {
            assert!(
                names.contains(&format!("{chart}.{ext}")),
                "{chart}.{ext} in {names:?}"
            );
        }
    }
    for path in &written {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.len() > 2000,
            "{} is only {} bytes",
            path.display(),
            bytes.len()
        );
        if path.extension().unwrap() == "png" {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
        } else {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains("<svg"), "{}", path.display());
        }
    }
    let svg = std::fs::read_to_string(dir.join("workers.svg")).unwrap();
    assert!(svg.contains("w2"), "the legend names the workers");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nothing_to_plot_is_an_error() {
    let options = PlotOptions {
        out_dir: temp_dir("empty"),
        bucket: Duration::from_secs(1),
        title: None,
        agent: Vec::new(),
    };
    assert!(plot(&[("x".into(), Vec::new())], &options).is_err());
}

#[test]
fn cdf_ends_at_one_hundred_percent() {
    let values: Vec<f64> = (1..=1000).map(f64::from).collect();
    let points = cdf(&values);
    assert!(points.len() <= CDF_POINTS + 2);
    assert_eq!(points.first().unwrap(), &(1.0, 0.1));
    assert_eq!(points.last().unwrap(), &(1000.0, 100.0));
}
