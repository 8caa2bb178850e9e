//! The dashboard in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver + `fantoccini`) against the running stack: the agent in-process on the
//! process runtime and the `balancer` binary in front of its workers.
//!
//! Checks what the issue asks: the page shows every container the agent reports; a scale-up
//! through the API shows a new node within 3 s without a reload; a job sent from the page shows
//! its result and the worker that served it; a drained container turns SUNDOWN, then goes.
//! Issue #18: a job clicked in the jobs panel shows its journey (the balancer's record of its
//! attempts and the worker's log line with its id); a container clicked shows its logs and
//! follows them live. `GET /requests/{id}` is also checked over plain HTTP.
//! Screenshots: `target/dashboard.png` (laptop), `target/dashboard-phone.png` (375 px);
//! with `DASHBOARD_SCREENSHOT_DOCS=1` the laptop one also replaces `docs/dashboard.png`.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::{KillOnDrop, TestAgent, fast_config};
use common::testing::{repo_root, unique, workspace_binary};
use deployment_agent::RuntimeKind;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};

const STARTUP: Duration = Duration::from_secs(60);
/// The agent's token: the page asks for it at its first change.
const TOKEN: &str = "dashboard-secret";
/// How soon a scale-up must show on the page (the bound).
const NEW_NODE_WITHIN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_follows_the_live_stack_in_chromium() {
    let chromium = required_binary("chromium");
    let chromedriver = required_binary("chromedriver");
    let logs = repo_root().join("target");
    std::fs::create_dir_all(&logs).expect("cannot create target/");

    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rbdash{}", std::process::id());
    config.worker_binary = Some(workspace_binary("worker"));
    // Only the test changes the count: no load-based scaling either way.
    config.target_concurrency = 0.0;
    config.scale_down_stabilization = Duration::from_secs(3600);
    config.token = Some(TOKEN.into());
    let _workers = KillOnDrop(format!("--worker-id {}-worker-", config.app));
    let (balancer_port, admin_port) = (free_port(), free_port());
    config.dashboard_balancer_url = Some(format!("http://127.0.0.1:{balancer_port}"));
    config.balancer_admin_urls = vec![format!("http://127.0.0.1:{admin_port}")];
    let agent = TestAgent::start(config).await;

    let balancer = Balancer::start(&agent, balancer_port, admin_port, &logs, "dashboard");
    let browser = Browser::start(&chromium, &chromedriver, &logs).await;

    let outcome = AssertUnwindSafe(async {
        scenario(&agent, &balancer, &browser.client).await;
        locked_agent(&browser.client).await;
    })
    .catch_unwind()
    .await;
    if outcome.is_err() {
        let path = logs.join("dashboard-failure.png");
        if let Ok(Ok(png)) =
            tokio::time::timeout(Duration::from_secs(10), browser.client.screenshot()).await
        {
            let _ = std::fs::write(&path, png);
            eprintln!("screenshot of the failure: {}", path.display());
        }
        eprintln!(
            "balancer log: {}; chromedriver log: {}",
            balancer.log.display(),
            browser.log.display()
        );
    }
    browser.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(agent: &TestAgent, balancer: &Balancer, client: &Client) {
    let config = agent.get_json("/config").await;
    assert_eq!(config["dashboard"], json!(true), "{config}");
    assert_eq!(config["token_required"], json!(true), "{config}");
    assert!(
        config["balancer_url"]
            .as_str()
            .is_some_and(|url| url.starts_with("http://127.0.0.1:")),
        "{config}"
    );

    // The page shows the containers the agent reports, with a row of scores for each.
    within(
        Duration::from_secs(20),
        client.goto(&agent.url("/")),
        "load the page",
    )
    .await;
    let reported = poll(
        "the page to show every container of /stats",
        STARTUP,
        async || {
            let reported = stats_ids(agent).await;
            let shown = page_nodes(client).await;
            let rows = script(
                client,
                "return document.querySelectorAll('#containers li[data-container-id]').length",
            )
            .await;
            (reported.len() == 2
                && shown.keys().cloned().collect::<BTreeSet<_>>() == reported
                && rows == json!(2))
            .then_some(reported)
        },
    )
    .await;
    let bars = script(
        client,
        "return document.querySelectorAll('#containers .bar').length",
    )
    .await;
    assert_eq!(bars, json!(10), "five score bars per container");

    // The balancer serves once a worker is ready.
    poll("the balancer to have a backend", STARTUP, async || {
        let response = agent
            .client
            .get(balancer.admin_url("/ready"))
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    poll(
        "every container to serve (LU) on the page",
        STARTUP,
        async || {
            let shown = page_nodes(client).await;
            (shown.len() == 2 && shown.values().all(|c| c == "LU")).then_some(())
        },
    )
    .await;

    // Scale up through the API: a new node within 3 s, without a reload.
    script(client, "window.rbNoReload = true; return true").await;
    let asked = Instant::now();
    let response = agent
        .client
        .post(agent.url("/scale"))
        .bearer_auth(TOKEN)
        .json(&json!({"replicas": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let new_id = loop {
        let shown = page_nodes(client).await;
        if let Some(id) = shown.keys().find(|id| !reported.contains(*id)) {
            break id.clone();
        }
        assert!(
            asked.elapsed() < NEW_NODE_WITHIN,
            "no new node on the page {NEW_NODE_WITHIN:?} after POST /scale; page shows {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "new node {new_id} shown {:?} after POST /scale",
        asked.elapsed()
    );
    assert_eq!(
        script(client, "return window.rbNoReload === true").await,
        json!(true),
        "the page reloaded"
    );
    poll(
        "three serving containers on the page and in /stats",
        STARTUP,
        async || {
            let shown = page_nodes(client).await;
            let reported = stats_ids(agent).await;
            (shown.len() == 3
                && shown.values().all(|c| c == "LU")
                && shown.keys().cloned().collect::<BTreeSet<_>>() == reported)
                .then_some(())
        },
    )
    .await;

    // Jobs from the page's form through the balancer: result, time, worker (X-Backend). The
    // page is on the agent's port, so the browser asks the balancer first (CORS preflight).
    let origin = format!("http://{}", agent.http);
    let preflight = agent
        .client
        .request(reqwest::Method::OPTIONS, balancer.url("/submit"))
        .header("Origin", &origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .expect("CORS preflight to the balancer");
    let allowed = preflight
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert!(
        preflight.status().is_success()
            && matches!(allowed.as_deref(), Some(o) if o == origin || o == "*"),
        "the balancer does not allow the dashboard's origin {origin} (CORS_ORIGINS): preflight \
         answered {} with Access-Control-Allow-Origin {allowed:?}",
        preflight.status()
    );
    let names = stats_names(agent).await;
    submit_jobs(client, "monte_carlo_pi", "200000", 2).await;
    submit_jobs(client, "sleep", "1", 3).await;
    let pending = script(
        client,
        "return [...document.querySelectorAll('#jobs .job[data-state=pending]')]
            .filter(j => j.textContent.includes('sleep')).length",
    )
    .await;
    assert_eq!(pending, json!(3), "three sleep jobs in flight at once");
    let jobs = poll("five finished jobs", Duration::from_secs(30), async || {
        let jobs = script(
            client,
            "return [...document.querySelectorAll('#jobs .job')].map(j => ({
                state: j.dataset.state,
                backend: j.querySelector('.job-backend').textContent,
                result: j.querySelector('.job-result').textContent,
                time: j.querySelector('.job-time').textContent,
                text: j.textContent }))",
        )
        .await;
        let jobs = jobs.as_array().cloned().unwrap_or_default();
        (jobs.len() == 5 && jobs.iter().all(|j| j["state"] != "pending")).then_some(jobs)
    })
    .await;
    for job in &jobs {
        assert_eq!(job["state"], "done", "a job failed on the page: {job}");
        let backend = job["backend"].as_str().unwrap_or_default();
        assert!(
            names.contains(backend),
            "X-Backend `{backend}` is not a container of the agent ({names:?}): {job}"
        );
        assert!(
            !job["time"].as_str().unwrap_or_default().is_empty(),
            "{job}"
        );
    }
    let pi: Vec<&Value> = jobs
        .iter()
        .filter(|j| {
            j["text"]
                .as_str()
                .unwrap_or_default()
                .contains("monte_carlo_pi")
        })
        .collect();
    assert_eq!(pi.len(), 2, "{jobs:?}");
    for job in pi {
        assert!(
            job["result"]
                .as_str()
                .unwrap_or_default()
                .starts_with("π ≈ 3.1"),
            "{job}"
        );
    }

    journey_from_a_job(agent, client, &jobs).await;
    followed_logs(agent, balancer, client).await;

    // One agent, no election: the summary says it leads alone.
    poll(
        "the leader in the summary",
        Duration::from_secs(10),
        async || {
            let leader = script(
                client,
                "return document.getElementById('sum-leader').textContent",
            )
            .await;
            (leader.as_str() == Some("this agent (alone)")).then_some(())
        },
    )
    .await;

    // Phone width: everything fits, nothing scrolls sideways.
    within(
        Duration::from_secs(10),
        client.set_window_size(375, 812),
        "resize",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let widths = script(
        client,
        "return [window.innerWidth, document.documentElement.scrollWidth]",
    )
    .await;
    let (inner, scroll) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
    assert!(
        inner <= 400,
        "the window did not shrink to a phone's width: {widths}"
    );
    assert!(
        scroll <= inner,
        "horizontal scrolling at {inner} px: content is {scroll} px wide"
    );
    save_screenshot(client, "dashboard-phone.png", false).await;
    // The journey and the followed logs fit the phone too, without sideways scrolling of
    // their own.
    let overflow = script(
        client,
        "return ['.panel-journey', '.panel-logs', '#journey-attempts', '#journey-logs', '#logs']
            .map(css => document.querySelector(css))
            .filter(node => node.scrollWidth > node.clientWidth + 1)
            .map(node => `${node.id || node.className}: ${node.scrollWidth} > ${node.clientWidth}`)",
    )
    .await;
    assert_eq!(overflow, json!([]), "wider than the phone's screen");
    for (css, name) in [
        (".panel-journey", "dashboard-phone-journey.png"),
        (".panel-logs", "dashboard-phone-logs.png"),
    ] {
        script(
            client,
            &format!("document.querySelector('{css}').scrollIntoView(); return true"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let panel = find(client, css, css).await;
        let png = within(
            Duration::from_secs(20),
            panel.screenshot(),
            "panel screenshot",
        )
        .await;
        let path = repo_root().join("target").join(name);
        std::fs::write(&path, &png).expect("cannot write the screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    // Laptop, tall enough for the whole page in the screenshot.
    within(
        Duration::from_secs(10),
        client.set_window_size(1280, 900),
        "resize",
    )
    .await;
    let height = script(client, "return document.documentElement.scrollHeight").await;
    let height = height.as_u64().unwrap_or(900).clamp(900, 2400) as u32;
    within(
        Duration::from_secs(10),
        client.set_window_size(1280, height),
        "resize",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Drain one from its button while jobs run: SUNDOWN on the page, in the event log, then
    // gone once its jobs are done; none of them fails.
    submit_jobs(client, "sleep", "3", 6).await;
    poll(
        "requests in flight on the page",
        Duration::from_secs(10),
        async || {
            let busy = script(
                client,
                "return document.getElementById('sum-inflight').textContent",
            )
            .await;
            (busy.as_str().and_then(|n| n.parse::<u32>().ok()) >= Some(1)).then_some(())
        },
    )
    .await;
    // The work they hold, from the balancer's cost estimates and load reports: in the
    // summary and on a container's row.
    poll(
        "work in flight on the page",
        Duration::from_secs(15),
        async || {
            let shown = script(
                client,
                "return [document.getElementById('sum-work').textContent, \
                 Array.from(document.querySelectorAll('.c-work')).map(n => n.textContent).join('|')]",
            )
            .await;
            let seconds = shown[0]
                .as_str()
                .and_then(|text| text.strip_suffix(" s"))
                .and_then(|n| n.parse::<f64>().ok());
            let rows = shown[1].as_str().unwrap_or_default();
            (seconds > Some(0.0) && rows.contains(" s work")).then_some(())
        },
    )
    .await;
    let victim = reported.iter().next().unwrap().clone();
    let button = find(
        client,
        &format!("button[data-drain=\"{victim}\"]"),
        "find the drain button",
    )
    .await;
    within(Duration::from_secs(10), button.click(), "click drain").await;
    // The first change asks for the token, once, in a dialog.
    let token = within(
        Duration::from_secs(10),
        client
            .wait()
            .at_most(Duration::from_secs(5))
            .for_element(Locator::Css("#token-dialog[open] #token-input")),
        "the token dialog",
    )
    .await;
    within(
        Duration::from_secs(10),
        token.send_keys(TOKEN),
        "type the token",
    )
    .await;
    let use_token = find(
        client,
        "#token-form button[type=submit]",
        "find the token button",
    )
    .await;
    within(
        Duration::from_secs(10),
        use_token.click(),
        "click use token",
    )
    .await;
    let clicked = Instant::now();
    loop {
        let shown = page_nodes(client).await;
        match shown.get(&victim).map(String::as_str) {
            Some("SUNDOWN") => break,
            other => assert!(
                clicked.elapsed() < Duration::from_secs(5),
                "{victim} not shown as SUNDOWN 5 s after its drain button (shown: {other:?})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // let the bars settle
    save_screenshot(client, "dashboard.png", true).await;
    poll(
        "the sundown event in the log",
        Duration::from_secs(10),
        async || {
            let selector = format!("#events li[data-kind=sundown][data-container=\"{victim}\"]");
            let found = script(
                client,
                &format!("return document.querySelector('{selector}') !== null"),
            )
            .await;
            (found == json!(true)).then_some(())
        },
    )
    .await;
    poll(
        "the drained container to leave the page",
        Duration::from_secs(30),
        async || {
            let shown = page_nodes(client).await;
            (!shown.contains_key(&victim)).then_some(())
        },
    )
    .await;
    let reported = stats_ids(agent).await;
    assert!(!reported.contains(&victim), "/stats still reports {victim}");
    let states = poll(
        "all eleven jobs to finish",
        Duration::from_secs(30),
        async || {
            let states = script(
                client,
                "return [...document.querySelectorAll('#jobs .job')].map(j => j.dataset.state)",
            )
            .await;
            let states: Vec<String> = serde_json::from_value(states).unwrap_or_default();
            (states.len() == 11 && !states.iter().any(|s| s == "pending")).then_some(states)
        },
    )
    .await;
    assert!(
        states.iter().all(|s| s == "done"),
        "a job failed while a container drained: {states:?}"
    );
}

/// `dns_name -> id` of the containers in `/stats`.
async fn ids_by_name(agent: &TestAgent) -> BTreeMap<String, String> {
    stats(agent)
        .await
        .iter()
        .filter_map(|c| {
            Some((
                c["dns_name"].as_str()?.to_owned(),
                c["id"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// An id pasted that no balancer knows, and a malformed one, say so. A job clicked in the
/// jobs panel shows its journey: the balancer's record (its attempt on the container of its
/// X-Backend) and the worker's log line with its X-Request-Id.
async fn journey_from_a_job(agent: &TestAgent, client: &Client, jobs: &[Value]) {
    // Pasted: an id no balancer has, then one that is not an id.
    for (typed, expected) in [
        (format!("never-sent-{}", unique()), "not found"),
        ("not an id!".to_owned(), "characters"),
    ] {
        let input = find(client, "#journey-id", "find the journey input").await;
        within(Duration::from_secs(10), input.clear(), "clear").await;
        within(Duration::from_secs(10), input.send_keys(&typed), "type").await;
        let button = find(client, "#journey-submit", "find the journey button").await;
        within(Duration::from_secs(10), button.click(), "click show").await;
        let what = format!("the journey's error for `{typed}` (`{expected}`)");
        let said = poll(&what, Duration::from_secs(10), async || {
            let said = script(
                client,
                "const box = document.getElementById('journey');
                 return box.dataset.state === 'error'
                   ? document.getElementById('journey-error').textContent : null",
            )
            .await;
            said.as_str()
                .filter(|said| said.contains(expected))
                .map(str::to_owned)
        })
        .await;
        eprintln!("`{typed}`: {said}");
    }

    // Clicked: a job the page sent.
    let job = script(
        client,
        "const j = [...document.querySelectorAll('#jobs .job[data-state=done][data-request-id]')]
            .find(j => j.textContent.includes('monte_carlo_pi'));
         return j ? [j.dataset.requestId, j.dataset.backend] : null",
    )
    .await;
    let (Some(id), Some(backend)) = (job[0].as_str(), job[1].as_str()) else {
        panic!("no finished job with an X-Request-Id on the page: {job} ({jobs:?})");
    };
    let container = ids_by_name(agent).await.get(backend).cloned();
    let container = container.unwrap_or_else(|| panic!("X-Backend {backend} is no container"));
    let row = find(
        client,
        &format!("#jobs .job[data-request-id=\"{id}\"]"),
        "find the job's row",
    )
    .await;
    within(Duration::from_secs(10), row.click(), "click the job").await;
    // The worker's line reaches the agent through its output: the view is asked again
    // until it shows, as a user would click again.
    let shown = poll(
        "the job's journey with the worker's line",
        Duration::from_secs(20),
        async || {
            let shown = script(
                client,
                &format!(
                    "const box = document.getElementById('journey');
                     if (box.dataset.id !== '{id}') return {{ state: 'other' }};
                     if (box.dataset.state !== 'found') return {{ state: box.dataset.state }};
                     return {{ state: 'found',
                       attempts: [...box.querySelectorAll('.journey-attempt')]
                         .map(a => [a.dataset.backend, a.dataset.outcome, a.textContent]),
                       logs: [...box.querySelectorAll('.journey-log')]
                         .map(l => [l.dataset.container, l.textContent]),
                       summary: document.getElementById('journey-summary').textContent }}"
                ),
            )
            .await;
            let logs = shown["logs"].as_array().cloned().unwrap_or_default();
            let worker_line = logs.iter().any(|l| {
                let text = l[1].as_str().unwrap_or_default();
                l[0] == json!(container) && text.contains(id) && text.contains("job ")
            });
            if !worker_line {
                if shown["state"] == "loading" {
                    return None;
                }
                let css = format!("#jobs .job[data-request-id=\"{id}\"]");
                let again = client.find(Locator::Css(&css));
                if let Ok(Ok(row)) = tokio::time::timeout(Duration::from_secs(5), again).await {
                    let _ = tokio::time::timeout(Duration::from_secs(5), row.click()).await;
                }
                return None;
            }
            Some(shown)
        },
    )
    .await;
    let attempts = shown["attempts"].as_array().cloned().unwrap_or_default();
    let last = attempts
        .last()
        .unwrap_or_else(|| panic!("no attempt shown: {shown}"));
    assert_eq!(last[0], json!(container), "{shown}");
    assert_eq!(last[1], json!("answered"), "{shown}");
    let summary = shown["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("POST /submit") && summary.contains("200"),
        "{summary}"
    );
    eprintln!("journey of {id} shown: {shown}");
}

/// A container clicked shows its recent log lines, then follows them: a job sent to it with a
/// fresh X-Request-Id shows its line in the panel, without a reload.
async fn followed_logs(agent: &TestAgent, balancer: &Balancer, client: &Client) {
    let ids = ids_by_name(agent).await;
    let (name, container) = ids.iter().next().expect("a container");
    let open = find(
        client,
        &format!("#containers li[data-container-id=\"{container}\"] .c-name"),
        "find the container's row",
    )
    .await;
    within(Duration::from_secs(10), open.click(), "click the container").await;
    poll(
        "the container's recent lines, then following",
        Duration::from_secs(20),
        async || {
            let state = script(
                client,
                "const logs = document.getElementById('logs');
                 return [logs.dataset.state, logs.dataset.container,
                         logs.querySelectorAll('.log-line').length]",
            )
            .await;
            (state[0] == "following" && state[1] == json!(container) && state[2].as_u64() > Some(0))
                .then_some(())
        },
    )
    .await;
    // Jobs with fresh ids straight through the balancer until one lands on that container.
    let mut sent = Vec::new();
    let id = loop {
        assert!(sent.len() < 40, "40 jobs and none went to {name}: {sent:?}");
        let id = format!("follow-{}-{}", sent.len(), unique());
        let response = agent
            .client
            .post(balancer.url("/submit"))
            .header("X-Request-Id", &id)
            .json(&json!({"operation": "monte_carlo_pi", "data": {"iterations": 1000}}))
            .send()
            .await
            .expect("a job through the balancer");
        assert_eq!(response.status(), 200, "{id}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(header("x-request-id").as_deref(), Some(id.as_str()));
        let backend = header("x-backend").unwrap_or_default();
        sent.push((id.clone(), backend.clone()));
        if &backend == name {
            break id;
        }
    };
    poll(
        "the job's line in the followed panel",
        Duration::from_secs(15),
        async || {
            let found = script(
                client,
                &format!(
                    "return [...document.querySelectorAll('#logs .log-line')]
                       .some(l => l.textContent.includes('{id}'))"
                ),
            )
            .await;
            (found == json!(true)).then_some(())
        },
    )
    .await;
    // The jobs that went elsewhere are not in this container's panel.
    for (other, backend) in &sent {
        if backend == name {
            continue;
        }
        let found = script(
            client,
            &format!(
                "return [...document.querySelectorAll('#logs .log-line')]
                   .some(l => l.textContent.includes('{other}'))"
            ),
        )
        .await;
        assert_eq!(found, json!(false), "{other} went to {backend}, not {name}");
    }
    eprintln!("followed {name}: {id} shown after {} jobs", sent.len());
}

/// `GET /requests/{id}` over HTTP: the balancer's record and the worker's line for a request
/// sent with an id; 404 for an id no balancer has, 400 for a malformed one; 503 on an agent
/// with no BALANCER_ADMIN_URLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_joins_a_requests_journey() {
    let logs = repo_root().join("target");
    std::fs::create_dir_all(&logs).expect("cannot create target/");
    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rbjourney{}", std::process::id());
    config.worker_binary = Some(workspace_binary("worker"));
    let _workers = KillOnDrop(format!("--worker-id {}-worker-", config.app));
    let (balancer_port, admin_port) = (free_port(), free_port());
    config.balancer_admin_urls = vec![format!("http://127.0.0.1:{admin_port}")];
    let agent = TestAgent::start(config).await;
    let balancer = Balancer::start(&agent, balancer_port, admin_port, &logs, "journey");
    poll("the balancer to have a backend", STARTUP, async || {
        let response = agent
            .client
            .get(balancer.admin_url("/ready"))
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    let id = format!("journey-{}", unique());
    let response = agent
        .client
        .post(balancer.url("/submit"))
        .header("X-Request-Id", &id)
        .json(&json!({"operation": "monte_carlo_pi", "data": {"iterations": 10000}}))
        .send()
        .await
        .expect("a job through the balancer");
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("x-request-id").as_deref(), Some(id.as_str()));
    let backend = header("x-backend").expect("X-Backend");
    let container = ids_by_name(&agent).await[&backend].clone();

    let journey = poll(
        "the journey with the worker's line",
        Duration::from_secs(20),
        async || {
            let response = agent
                .client
                .get(agent.url(&format!("/requests/{id}")))
                .send()
                .await
                .ok()?;
            if response.status() != 200 {
                return None;
            }
            let journey: Value = response.json().await.ok()?;
            let logs = journey["logs"].as_array()?;
            logs.iter()
                .any(|l| {
                    let line = l["line"].as_str().unwrap_or_default();
                    line.contains("job done") && line.contains(&id)
                })
                .then_some(journey)
        },
    )
    .await;
    eprintln!("{journey:#}");
    assert_eq!(journey["id"], json!(id));
    assert_eq!(
        journey["balancer"],
        json!(format!("127.0.0.1:{admin_port}"))
    );
    assert_eq!(journey["unreachable"], json!([]));
    let record = &journey["record"];
    assert_eq!(record["id"], json!(id), "{record}");
    assert_eq!(record["status"], json!(200), "{record}");
    let attempts = record["attempts"].as_array().expect("attempts");
    let last = attempts.last().expect("an attempt");
    assert_eq!(last["backend"], json!(container), "{record}");
    assert_eq!(last["outcome"], json!("answered"), "{record}");
    for line in journey["logs"].as_array().unwrap() {
        assert_eq!(line["container"], json!(container), "{line}");
        assert_eq!(line["name"], json!(backend), "{line}");
        assert!(line["line"].as_str().unwrap().contains(&id), "{line}");
    }
    let times: Vec<u64> = journey["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["at_ms"].as_u64())
        .collect();
    assert!(times.is_sorted(), "not in time order: {times:?}");
    assert_eq!(
        journey["containers"],
        json!([{"container": container, "name": backend, "lines": times.len(),
                "truncated": false, "error": null}]),
        "{journey}"
    );

    // Unknown, malformed, oversized.
    let get = async |path: &str| {
        let response = agent.client.get(agent.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or_default())
    };
    let (status, body) = get(&format!("/requests/never-sent-{}", unique())).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no balancer remembers"),
        "{body}"
    );
    for bad in ["a%20b".to_owned(), "a%3Cb".to_owned(), "x".repeat(129)] {
        let (status, body) = get(&format!("/requests/{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().is_some(), "{body}");
    }

    // An agent that knows no balancer says what to set.
    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rbnojourney{}", std::process::id());
    config.worker_binary = Some(workspace_binary("worker"));
    config.min_containers = 0;
    config.default_container = Some(0);
    let alone = TestAgent::start(config).await;
    let response = poll("the second agent to answer", STARTUP, async || {
        alone
            .client
            .get(alone.url(&format!("/requests/{id}")))
            .send()
            .await
            .ok()
    })
    .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("BALANCER_ADMIN_URLS"),
        "{body}"
    );
}

/// An agent started without a token refuses every change: the page says it is locked and
/// why, instead of asking for a token no one has.
async fn locked_agent(client: &Client) {
    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rblocked{}", std::process::id());
    config.worker_binary = Some(workspace_binary("worker"));
    config.min_containers = 0;
    config.default_container = Some(0);
    config.token = None;
    let agent = TestAgent::start(config).await;
    within(
        Duration::from_secs(20),
        client.goto(&agent.url("/")),
        "load the locked agent's page",
    )
    .await;
    poll("the page to say it is locked", STARTUP, async || {
        let state = script(
            client,
            "return document.getElementById('token-state').textContent",
        )
        .await;
        (state.as_str().is_some_and(|s| s.contains("locked"))).then_some(())
    })
    .await;
    let replicas = find(client, "#replicas", "find replicas").await;
    within(Duration::from_secs(10), replicas.clear(), "clear").await;
    within(Duration::from_secs(10), replicas.send_keys("2"), "type").await;
    let scale = find(client, "#replicas-form button[type=submit]", "find scale").await;
    within(Duration::from_secs(10), scale.click(), "click scale").await;
    let said = poll(
        "the refusal on the page",
        Duration::from_secs(10),
        async || {
            let text = script(
                client,
                "return document.getElementById('control-status').textContent",
            )
            .await;
            let text = text.as_str().unwrap_or_default().to_owned();
            (!text.is_empty()).then_some(text)
        },
    )
    .await;
    assert!(
        said.contains("no token") && said.contains("AGENT_TOKEN"),
        "the page said: {said}"
    );
    let asked = script(
        client,
        "return document.getElementById('token-dialog').open",
    )
    .await;
    assert_eq!(asked, json!(false), "the page asked for a token no one has");
    assert_eq!(agent.get_json("/status").await["worker_count"], 0);
}

/// `/ws/events`, the page's event log: the recent events oldest first, then each new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_websocket_replays_recent_events_then_pushes_new_ones() {
    use tokio_tungstenite::tungstenite::Message;

    let mut config = fast_config();
    config.runtime = RuntimeKind::Process;
    config.app = format!("rbevents{}", std::process::id());
    config.worker_binary = Some(workspace_binary("worker"));
    let _workers = KillOnDrop(format!("--worker-id {}-worker-", config.app));
    let agent = TestAgent::start(config).await;
    let past = poll("both workers ready", STARTUP, async || {
        let events = agent.get_json("/events?limit=50").await["events"].clone();
        let events = events.as_array().cloned().unwrap_or_default();
        let ready = events.iter().filter(|e| e["kind"] == "ready").count();
        (ready == 2).then_some(events)
    })
    .await;

    let url = format!("ws://{}/ws/events", agent.http);
    let (mut socket, _) = within(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
        "connect to /ws/events",
    )
    .await;
    let mut next = async || loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("no event message within 5 s");
        match message {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str::<Value>(&text).expect("an event is JSON");
            }
            Some(Ok(_)) => continue,
            other => panic!("the event socket ended: {other:?}"),
        }
    };
    // The past first, oldest first: exactly what `/events` lists, newest first.
    for expected in past.iter().rev() {
        assert_eq!(&next().await, expected);
    }
    let response = agent
        .post("/scale", &json!({"min_replicas": 2, "max_replicas": 3}))
        .await;
    assert_eq!(response.status(), 202);
    let pushed = next().await;
    assert_eq!(pushed["kind"], "config_changed", "{pushed}");
    assert_eq!(pushed["message"], "replica bounds set to 2..3", "{pushed}");
    for field in ["at_ms", "container", "replicas"] {
        assert!(pushed.get(field).is_some(), "{field} missing: {pushed}");
    }
}

/// Picks an operation and a size in the form, sets how many, and sends.
async fn submit_jobs(client: &Client, operation: &str, size: &str, count: u32) {
    let element = async |css: &str| find(client, css, css).await;
    let select = element("#job-operation").await;
    within(
        Duration::from_secs(10),
        select.select_by_value(operation),
        "select",
    )
    .await;
    for (css, value) in [
        ("#job-size", size.to_owned()),
        ("#job-count", count.to_string()),
    ] {
        let input = element(css).await;
        within(Duration::from_secs(10), input.clear(), "clear").await;
        within(Duration::from_secs(10), input.send_keys(&value), "type").await;
    }
    let send = element("#job-submit").await;
    within(Duration::from_secs(10), send.click(), "click send").await;
}

/// `id -> category` of the graph's container nodes.
async fn page_nodes(client: &Client) -> BTreeMap<String, String> {
    let nodes = script(
        client,
        "return [...document.querySelectorAll('#graph .node[data-id]')]
            .map(n => [n.dataset.id, n.dataset.category])",
    )
    .await;
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| {
            Some((
                pair[0].as_str()?.to_owned(),
                pair[1].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

async fn script(client: &Client, code: &str) -> Value {
    within(Duration::from_secs(10), client.execute(code, vec![]), code).await
}

async fn stats(agent: &TestAgent) -> Vec<Value> {
    let stats = agent.get_json("/stats").await;
    stats["containers"].as_array().cloned().unwrap_or_default()
}

async fn stats_ids(agent: &TestAgent) -> BTreeSet<String> {
    stats(agent)
        .await
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect()
}

async fn stats_names(agent: &TestAgent) -> BTreeSet<String> {
    stats(agent)
        .await
        .iter()
        .filter_map(|c| c["dns_name"].as_str().map(str::to_owned))
        .collect()
}

/// Saves the viewport to `target/<name>`, and to `docs/` when asked and enabled.
async fn save_screenshot(client: &Client, name: &str, docs: bool) {
    script(client, "window.scrollTo(0, 0); return true").await;
    let png = within(Duration::from_secs(20), client.screenshot(), "screenshot").await;
    let path = repo_root().join("target").join(name);
    std::fs::write(&path, &png).expect("cannot write the screenshot");
    eprintln!("screenshot: {}", path.display());
    if docs && std::env::var_os("DASHBOARD_SCREENSHOT_DOCS").is_some_and(|v| v == "1") {
        let docs = repo_root().join("docs").join(name);
        std::fs::write(&docs, &png).expect("cannot write the docs screenshot");
        eprintln!("screenshot: {}", docs.display());
    }
}

/// Awaits `future` for at most `timeout`; panics naming `what` on a timeout or an error.
/// The element `css` selects, within 10 s; `what` names the step in a failure.
async fn find(client: &Client, css: &str, what: &str) -> fantoccini::elements::Element {
    within(
        Duration::from_secs(10),
        client.find(Locator::Css(css)),
        what,
    )
    .await
}

async fn within<T, E: std::fmt::Debug>(
    timeout: Duration,
    future: impl Future<Output = Result<T, E>>,
    what: &str,
) -> T {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(value)) => value,
        Ok(Err(err)) => panic!("{what}: {err:?}"),
        Err(_) => panic!("{what}: no answer within {timeout:?}"),
    }
}

/// Calls `probe` every 100 ms until it gives a value; panics naming `what` after `timeout`.
async fn poll<T>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The path of `name` on PATH; panics naming the Debian packages when it is missing.
fn required_binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: the dashboard test needs the Debian packages `chromium` \
             and `chromium-driver` (apt-get install chromium chromium-driver; jobs/test.sh \
             installs them)"
        )
    })
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("no free port");
    listener.local_addr().unwrap().port()
}

/// A child process, killed when the test ends, passed or failed.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `balancer` binary, routing on the agent's queue, allowing the page's origin (CORS).
struct Balancer {
    port: u16,
    admin_port: u16,
    log: PathBuf,
    _child: ChildGuard,
}

impl Balancer {
    fn start(agent: &TestAgent, port: u16, admin_port: u16, logs: &Path, test: &str) -> Self {
        let log = logs.join(format!("{test}-balancer.log"));
        let file = std::fs::File::create(&log).expect("cannot create the balancer log");
        let child = Command::new(workspace_binary("balancer"))
            .env_clear()
            .env("BALANCER_HOST", "127.0.0.1")
            .env("HOST_PORT_HTTP_BALANCER", port.to_string())
            .env("HOST_PORT_ADMIN_BALANCER", admin_port.to_string())
            .env("AGENT_WS_URL", format!("ws://{}/ws", agent.ws))
            .env("AGENT_GRPC_URL", format!("http://{}", agent.grpc))
            .env("CORS_ORIGINS", format!("http://{}", agent.http))
            // Jobs have a cost: the page shows the work in flight.
            .env(
                "COST_RULES",
                "POST /submit class=/operation size=/data/iterations|/data/limit|/data/seconds",
            )
            .env("AGENT_TOKEN", agent.token.as_deref().unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("cannot start the balancer");
        Self {
            port,
            admin_port,
            log,
            _child: ChildGuard(child),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }
}

/// Chromium, headless, behind chromedriver on a free loopback port. On drop, chromedriver and
/// every Chromium process of this test's profile are killed and the profile removed.
struct Browser {
    client: Client,
    log: PathBuf,
    profile: PathBuf,
    _driver: ChildGuard,
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path, logs: &Path) -> Self {
        let port = free_port();
        let log = logs.join("dashboard-chromedriver.log");
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start chromedriver");
        let driver = ChildGuard(driver);
        let profile = std::env::temp_dir().join(format!("rb-dashboard-chromium-{}", unique()));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        poll(
            "chromedriver to answer",
            Duration::from_secs(20),
            async || {
                let status: Value = http
                    .get(format!("{url}/status"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (status["value"]["ready"] == json!(true)).then_some(())
            },
        )
        .await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    "--no-first-run",
                    "--no-default-browser-check",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = within(
            Duration::from_secs(60),
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&url),
            "start a Chromium session through chromedriver",
        )
        .await;
        Self {
            client,
            log,
            profile,
            _driver: driver,
        }
    }

    /// Ends the session (Chromium exits), then drops the rest.
    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.clone().close()).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-9", "-f", "--", &self.profile.to_string_lossy()])
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
