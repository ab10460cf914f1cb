//! The HTTP API of a running `weir run`, as an operator and a dashboard use it: health and readiness,
//! Prometheus metrics, the OpenAPI document, queries of recent data, token-protected control with an
//! upload limit, and replays started from the API.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Harness, LakeAt, now_ms, realistic};
use crate::support::{get_json, http, metric, plugin_path};

const TOKEN: &str = "test-token";
const RECENT_GOLD_ROWS: i64 = 10;

#[test]
fn the_api_reports_queries_controls_and_replays() {
    let h = Harness::new(LakeAt::Local, |t| {
        let api = t["api"].as_table_mut().unwrap();
        api.insert("token".into(), TOKEN.into());
        // Smaller than a plugin, to see the limit at work.
        api.insert("max_upload_bytes".into(), 100_000.into());
        // Fewer than the run emits, to see older rows come from the lake.
        api.insert("recent_gold_rows".into(), RECENT_GOLD_ROWS.into());
    });
    let events = 3000;
    let last = h.prefill(realistic(23, events, Duration::from_secs(25 * 60)), events);
    let mut weir = h.weir(&[]);
    let api = weir.api(Duration::from_secs(60));
    h.wait_committed(&mut weir, last, Duration::from_secs(180));

    assert_eq!(http("GET", &format!("{api}/health"), None, None).0, 200);
    // `weir health`, the container's health check: 0 while it answers, 1 for an address nothing serves.
    let health = |url: &str, ready: bool| {
        let mut command = std::process::Command::new(crate::support::weir_bin());
        command.args(["health", "--url", url]);
        if ready {
            command.arg("--ready");
        }
        command.output().unwrap()
    };
    let ok = health(&api, true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("\"ready\":true"));
    let nobody = format!("http://127.0.0.1:{}", crate::harness::free_ports(1)[0]);
    assert!(!health(&nobody, false).status.success());
    let ready = get_json(&api, "/ready");
    assert_eq!(ready["ready"], true, "{ready}");

    let (code, metrics) = http("GET", &format!("{api}/metrics"), None, None);
    assert_eq!(code, 200);
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(name.starts_with("weir_"), "{line}");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "a counter without _total: {line}");
        }
    }
    let received = metrics
        .lines()
        .find(|l| l.starts_with("weir_events_received_total"))
        .unwrap_or_else(|| panic!("no weir_events_received_total:\n{metrics}"));
    assert!(received.ends_with(&format!(" {last}")), "{received}");
    // The backlog gauge, measured every 5 s: nothing waits once everything is committed and acked.
    wait_pending(&api, |n| n == 0);
    // Where the pipeline's thread spent its time: every phase reported, and the plugins took some.
    let phases: Vec<(&str, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("weir_pipeline_thread_seconds_total{"))
        .map(|rest| {
            let phase = rest
                .split("phase=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (phase, rest.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(phases.len(), 7, "{metrics}");
    assert!(
        phases
            .iter()
            .any(|&(phase, s)| phase == "plugins" && s > 0.0),
        "{phases:?}"
    );

    let openapi = get_json(&api, "/openapi.json");
    assert_eq!(openapi["openapi"], "3.0.3");
    for path in [
        "/api/v1/gold/{table}",
        "/api/v1/pipeline/replay",
        "/metrics",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} not documented");
    }

    let plugins = get_json(&api, "/api/v1/plugins");
    let stages: Vec<&str> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "filter",
            "enrich",
            "dedupe",
            "quality",
            "gold_entity",
            "gold_user",
            "gold_wiki",
            "sessions"
        ]
    );
    let latest = get_json(&api, "/api/v1/events/latest?limit=5");
    assert_eq!(latest["events"].as_array().unwrap().len(), 5, "{latest}");

    // Per-wiki counts for a window, from the recent gold rows.
    let gold = get_json(&api, "/api/v1/gold/gold_wiki");
    let rows = gold["rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{gold}");
    assert!(rows.len() <= RECENT_GOLD_ROWS as usize, "{}", rows.len());
    // The run emitted more than memory keeps: the answer says it misses rows, and where to find them.
    assert_eq!(gold["dropped"], true, "{gold}");
    assert!(
        gold["hint"].as_str().unwrap().contains("source=lake"),
        "{gold}"
    );
    let newest = rows
        .iter()
        .map(|r| r["window_start"].as_i64().unwrap())
        .max()
        .unwrap();
    let later = get_json(&api, &format!("/api/v1/gold/gold_wiki?from={}", newest + 1));
    assert_eq!(later["dropped"], false, "{later}");
    assert!(later.get("hint").is_none(), "{later}");
    let wiki = rows[0]["wiki"].as_str().unwrap();
    let start = rows[0]["window_start"].as_i64().unwrap();
    let one = get_json(
        &api,
        &format!(
            "/api/v1/gold/gold_wiki?wiki={wiki}&from={start}&to={}",
            start + 1
        ),
    );
    let one = one["rows"].as_array().unwrap();
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["events"], rows[0]["events"]);
    let (code, _) = http("GET", &format!("{api}/api/v1/gold/nonesuch"), None, None);
    assert_eq!(code, 404);
    // The same from the committed table, for the oldest window in memory (committed long since).
    let oldest = rows.last().unwrap();
    let (wiki, start) = (
        oldest["wiki"].as_str().unwrap(),
        oldest["window_start"].as_i64().unwrap(),
    );
    let lake = get_json(
        &api,
        &format!(
            "/api/v1/gold/gold_wiki?source=lake&wiki={wiki}&from={start}&to={}",
            start + 1
        ),
    );
    assert_eq!(lake["source"], "lake", "{lake}");
    let lake = lake["rows"].as_array().unwrap();
    assert_eq!(lake.len(), 1, "{lake:?}");
    assert_eq!(lake[0]["events"], oldest["events"]);
    assert_eq!(lake[0]["window_start"], start);
    // Row for row the same as memory's, lineage and all.
    assert_eq!(lake[0], *oldest);
    let five = get_json(&api, "/api/v1/gold/gold_wiki?source=lake&limit=5");
    let page = five["rows"].as_array().unwrap();
    assert!(!page.is_empty() && page.len() <= 5, "{five}");
    assert_eq!(five["more"], true, "{five}");
    // Every row, from the lake: more than memory keeps, the ones in memory among them.
    let all = get_json(&api, "/api/v1/gold/gold_wiki?source=lake&limit=100000");
    assert_eq!(all["more"], false, "{all}");
    let all = all["rows"].as_array().unwrap();
    assert!(all.len() > rows.len(), "{} rows in the lake", all.len());
    let key = |r: &Value| {
        (
            r["wiki"].clone(),
            r["window_start"].clone(),
            r["events"].clone(),
        )
    };
    for row in rows {
        assert!(
            all.iter().any(|r| key(r) == key(row)),
            "{row} is not in the lake"
        );
    }
    // The default answer for a range holds every row of it, newest window first: the few memory keeps, the
    // rest from the lake.
    let keys = |rows: &[Value]| {
        let mut keys: Vec<String> = rows
            .iter()
            .map(|r| serde_json::to_string(&key(r)).unwrap())
            .collect();
        keys.sort();
        keys
    };
    let every = get_json(&api, "/api/v1/gold/gold_wiki?from=0&limit=100000");
    assert_eq!(every["source"], "memory+lake", "{every}");
    assert_eq!(every["dropped"], false, "{every}");
    let every = every["rows"].as_array().unwrap();
    assert_eq!(keys(every), keys(all));
    let starts: Vec<i64> = every
        .iter()
        .map(|r| r["window_start"].as_i64().unwrap())
        .collect();
    assert!(starts.is_sorted_by(|a, b| a >= b), "not newest first");
    assert_eq!(every.len(), all.len());
    let five = get_json(&api, "/api/v1/gold/gold_wiki?from=0&limit=5");
    assert_eq!(five["more"], true, "{five}");
    let page = five["rows"].as_array().unwrap();
    assert!(!page.is_empty() && page.len() <= 5, "{five}");
    assert_eq!(page[..], every[..page.len()]);
    // The widest window, cut: its first rows, a hint, and a next page after it, both ways; and at the end
    // of the range, no next page.
    let mut per_window: std::collections::HashMap<i64, usize> = Default::default();
    for start in &starts {
        *per_window.entry(*start).or_default() += 1;
    }
    let (&wide, &widest) = per_window.iter().max_by_key(|&(_, n)| *n).unwrap();
    assert!(widest > 1, "{per_window:?}");
    let limit = widest - 1;
    let cut = |query: String| {
        let answer = get_json(&api, &format!("/api/v1/gold/gold_wiki?{query}"));
        let page = answer["rows"].as_array().unwrap();
        assert_eq!(page.len(), limit, "{answer}");
        assert!(page.iter().all(|r| r["window_start"] == wide), "{answer}");
        assert_eq!(answer["more"], true, "{answer}");
        let hint = answer["hint"].as_str().unwrap();
        assert!(
            hint.contains(&format!("are more than limit={limit}")),
            "{hint}"
        );
        answer["next"].as_str().map(str::to_string)
    };
    let next = cut(format!("source=lake&from={wide}&limit={limit}"));
    assert_eq!(
        next.unwrap(),
        format!(
            "/api/v1/gold/gold_wiki?source=lake&limit={limit}&from={}",
            wide + 1
        )
    );
    let next = cut(format!("from=0&to={}&limit={limit}", wide + 1));
    assert_eq!(
        next.unwrap(),
        format!("/api/v1/gold/gold_wiki?from=0&limit={limit}&to={wide}")
    );
    assert_eq!(
        cut(format!("from={wide}&to={}&limit={limit}", wide + 1)),
        None
    );
    // Memory alone, paged: its newest rows, and older windows from `next` on, none of them twice.
    let newest = get_json(&api, "/api/v1/gold/gold_wiki?source=memory&limit=4");
    let page = newest["rows"].as_array().unwrap();
    assert!(
        !page.is_empty() && page[..] == rows[..page.len()],
        "{newest}"
    );
    if let Some(next) = newest["next"].as_str() {
        let last = page.last().unwrap()["window_start"].as_i64().unwrap();
        let older = get_json(&api, next);
        for row in older["rows"].as_array().unwrap() {
            assert!(row["window_start"].as_i64().unwrap() <= last, "{older}");
            assert!(!page.contains(row), "{older}");
        }
    }
    // Paged with `next`, newest first and (from the lake) oldest first: every row once, each page whole
    // windows. Pages of one to two windows, so the limit falls inside windows.
    let limit = widest + widest / 2 + 1;
    let paged = |first: String| {
        let (mut url, mut rows, mut pages) = (first, Vec::new(), 0);
        loop {
            let answer = get_json(&api, &url);
            let page = answer["rows"].as_array().unwrap();
            assert!(!page.is_empty() && page.len() <= limit, "{answer}");
            rows.extend(page.iter().cloned());
            pages += 1;
            match answer["next"].as_str() {
                Some(next) => {
                    assert_eq!(answer["more"], true, "{answer}");
                    url = next.to_string();
                }
                None => {
                    assert_eq!(answer["more"], false, "{answer}");
                    return (rows, pages);
                }
            }
        }
    };
    for first in [
        format!("/api/v1/gold/gold_wiki?from=0&limit={limit}"),
        format!("/api/v1/gold/gold_wiki?source=lake&limit={limit}"),
    ] {
        let (rows, pages) = paged(first.clone());
        assert!(pages > 1 || every.len() <= limit, "{first}: {pages} pages");
        assert_eq!(keys(&rows), keys(every), "{first}");
    }
    // One wiki's row of the oldest window in memory (which may keep only part of it).
    let one = get_json(
        &api,
        &format!(
            "/api/v1/gold/gold_wiki?wiki={wiki}&from={start}&to={}",
            start + 1
        ),
    );
    assert_eq!(one["rows"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["rows"][0]["events"], oldest["events"], "{one}");
    for (path, status) in [
        ("/api/v1/gold/nonesuch?source=lake", 404),
        ("/api/v1/gold/gold_wiki?source=elsewhere", 400),
        ("/api/v1/gold/gold_wiki?limit=ten", 400),
        ("/api/v1/gold/gold_wiki?limit=0", 400),
        ("/api/v1/gold/gold_wiki?source=lake&limit=100001", 400),
        ("/api/v1/gold/gold_wiki?from=2000&to=1000", 400),
        ("/api/v1/gold/gold_wiki?wkii=enwiki", 400),
        ("/api/v1/gold/gold_wiki?wkii=enwiki&source=lake", 400),
        ("/api/v1/events/latest?limit=-1", 400),
        ("/api/v1/events/latest?limit=5000", 400),
        ("/api/v1/events/latest?limit=200000", 400),
        ("/api/v1/events/latest?limt=5", 400),
        ("/api/v1/gold/gold_wiki?wiki=enwiki&wiki=dewiki", 400),
        ("/api/v1/events/latest?limit=1&limit=2", 400),
        // RFC 3339 with a space between date and time, and an offset whose `+` came as a space.
        ("/api/v1/gold/gold_wiki?from=2000-01-01%2000:00:00Z", 200),
        (
            "/api/v1/gold/gold_wiki?from=2000-01-01T02:00:00%2002:00",
            200,
        ),
    ] {
        assert_eq!(
            http("GET", &format!("{api}{path}"), None, None).0,
            status,
            "{path}"
        );
    }
    let (_, typo) = http(
        "GET",
        &format!("{api}/api/v1/gold/gold_wiki?wkii=enwiki"),
        None,
        None,
    );
    let typo: Value = serde_json::from_str(&typo).unwrap();
    let typo = typo["error"].as_str().unwrap();
    assert!(
        typo.contains("no column \"wkii\"") && typo.contains(", wiki,") && typo.contains("_plugin"),
        "{typo}"
    );
    let reasons = get_json(&api, "/api/v1/quarantine/reasons");
    assert!(
        !reasons["since_start"].as_object().unwrap().is_empty(),
        "{reasons}"
    );

    // Control needs the token; uploads have a limit.
    let pause = format!("{api}/api/v1/pipeline/pause");
    assert_eq!(http("POST", &pause, None, None).0, 401);
    assert_eq!(http("POST", &pause, Some("wrong"), None).0, 401);
    assert_eq!(
        http("POST", &pause, Some(&format!("{TOKEN}x")), None).0,
        401
    );
    assert_eq!(http("POST", &pause, Some(&TOKEN[..4]), None).0, 401);
    assert_eq!(http("POST", &pause, Some(TOKEN), None).0, 200);
    assert_eq!(get_json(&api, "/ready")["paused"], true);
    // What comes while paused waits in the stream, and the gauge tells how much.
    let backlog = 200;
    let last = h.prefill(realistic(37, backlog, Duration::from_secs(60)), backlog);
    wait_pending(&api, |n| n >= backlog);
    assert_eq!(
        http(
            "POST",
            &format!("{api}/api/v1/pipeline/resume"),
            Some(TOKEN),
            None
        )
        .0,
        200
    );
    h.wait_committed(&mut weir, last, Duration::from_secs(60));
    let enrich = format!("@{}", plugin_path("weir-plugin-enrich").display());
    let (code, body) = http(
        "POST",
        &format!("{api}/api/v1/plugins/enrich"),
        Some(TOKEN),
        Some(&enrich),
    );
    assert_eq!(code, 413, "{body}");
    let (code, body) = http(
        "POST",
        &format!("{api}/api/v1/plugins/nonesuch/rollback"),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("enrich"), "names the stages: {body}");

    // A replay from the API, into a new table version.
    let replay = format!("{api}/api/v1/pipeline/replay");
    let (code, body) = http(
        "POST",
        &replay,
        Some(TOKEN),
        Some(r#"{"version": "api-v2"}"#),
    );
    assert_eq!(code, 202, "{body}");
    for bad in [
        r#"{"version": "../x"}"#,
        r#"{"version": "v3", "from_seq": 100, "to_seq": 50}"#,
        r#"{"version": "v3", "from_time": "yesterday"}"#,
        r#"{"version": "v3", "from_seq": 1, "from_time": 0}"#,
    ] {
        let (code, body) = http("POST", &replay, Some(TOKEN), Some(bad));
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let finished = |version: &str| {
        let started = Instant::now();
        let status = loop {
            let replays = get_json(&api, "/api/v1/pipeline/replays");
            let job = replays["replays"]
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["version"] == version)
                .cloned()
                .unwrap_or_else(|| panic!("no replay {version}: {replays}"));
            if job["state"] != "running" {
                break job;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "{replays}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let log = std::fs::read_to_string(status["log"].as_str().unwrap()).unwrap_or_default();
        assert_eq!(status["state"], "finished", "{status}: {log}");
        (status, log)
    };
    let (status, _) = finished("api-v2");

    // And in place of the live rows from the middle on, while the pipeline runs.
    let body = format!(
        r#"{{"version": "api-fix", "from_seq": {}, "in_place": true}}"#,
        last / 2
    );
    let (code, body) = http("POST", &replay, Some(TOKEN), Some(&body));
    assert_eq!(code, 202, "{body}");
    let (_, log) = finished("api-fix");
    assert!(log.contains("put in place"), "{log}");
    weir.stop();

    // Restarted, memory holds none of the rows before: a range's answer reads them from the lake.
    let mut weir = h.weir(&[]);
    let api = weir.api(Duration::from_secs(60));
    let committed = get_json(&api, "/api/v1/gold/gold_wiki?source=lake&limit=100000");
    let every = get_json(&api, "/api/v1/gold/gold_wiki?from=0&limit=100000");
    assert_eq!(every["source"], "memory+lake", "{every}");
    assert_eq!(
        keys(every["rows"].as_array().unwrap()),
        keys(committed["rows"].as_array().unwrap())
    );
    let newest = get_json(&api, "/api/v1/gold/gold_wiki");
    assert_eq!(newest["rows"], serde_json::json!([]), "{newest}");
    assert_eq!(newest["dropped"], true, "{newest}");
    weir.stop();
    // The version sits beside the live tables without disturbing them.
    h.verify();
    h.read_back_at(status["lake"].as_str().unwrap())
        .assert_replayed(1, last);
    h.read_back().assert_exactly_once(last);
}

/// Waits (up to 20 s: the gauge is measured every 5 s) for `weir_consumer_pending_messages` to satisfy `ok`.
fn wait_pending(api: &str, ok: impl Fn(u64) -> bool) {
    let started = Instant::now();
    loop {
        let pending = metric(api, "weir_consumer_pending_messages")
            .unwrap_or_else(|| panic!("no weir_consumer_pending_messages behind {api}"));
        if ok(pending as u64) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "weir_consumer_pending_messages stays at {pending}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Before its first window closes, a gold table the pipeline emits answers with no rows and a note on when
/// rows come (not the 404 a table it does not emit gets); the watermark is a metric.
#[test]
fn gold_tables_answer_before_their_first_window_closes() {
    let h = Harness::new(LakeAt::Local, |_| {});
    // Three minutes of events from the start of the last whole 10-minute window: the watermark, a minute
    // behind the newest event, stays inside that window, so no window closes (none late: a late event
    // would open the window before, which the watermark has passed; nor is the first, whose time is jittered).
    let (events, window) = (300, 600_000);
    let start_ms = (now_ms() / window - 1) * window;
    let config = weir::source::generate::GenConfig {
        start_ms: start_ms + 10_000,
        events_per_s: events as f64 / 180.0,
        late: 0.0,
        ..realistic(29, events, Duration::from_secs(180))
    };
    let last = h.prefill(config, events);
    let mut weir = h.weir(&[]);
    let api = weir.api(Duration::from_secs(60));
    h.wait_committed(&mut weir, last, Duration::from_secs(120));

    let plugins = get_json(&api, "/api/v1/plugins");
    let sessions = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stage"] == "sessions")
        .unwrap_or_else(|| panic!("{plugins}"));
    assert_eq!(sessions["emits"], serde_json::json!(["gold_user_sessions"]));

    let gold = get_json(&api, "/api/v1/gold/gold_wiki");
    assert_eq!(gold["rows"], serde_json::json!([]), "{gold}");
    assert_eq!(gold["dropped"], false, "{gold}");
    let note = gold["note"].as_str().unwrap_or_else(|| panic!("{gold}"));
    assert!(
        note.contains("no window of gold_wiki has closed yet"),
        "{note}"
    );
    assert!(note.contains("the watermark is at"), "{note}");
    let lake = get_json(&api, "/api/v1/gold/gold_user_sessions?source=lake");
    assert_eq!(lake["rows"], serde_json::json!([]), "{lake}");
    assert!(
        lake["note"].as_str().unwrap().contains("committed yet"),
        "{lake}"
    );
    for path in [
        "/api/v1/gold/gold_nonesuch",
        "/api/v1/gold/gold_nonesuch?source=lake",
    ] {
        let (code, body) = http("GET", &format!("{api}{path}"), None, None);
        assert_eq!(code, 404, "{path}: {body}");
        assert!(body.contains("gold_user_sessions"), "{path}: {body}");
    }

    let watermark = metric(&api, "weir_watermark_timestamp_seconds")
        .unwrap_or_else(|| panic!("no weir_watermark_timestamp_seconds behind {api}"));
    let watermark_ms = (watermark * 1e3) as i64;
    assert!(
        (start_ms..start_ms + window).contains(&watermark_ms),
        "watermark {watermark_ms} outside the window from {start_ms}"
    );
    weir.stop();
}

/// A source that refuses is retried (it may come back), and the API says why it is not connected, without
/// the logs: `/api/v1/pipeline`'s `source.last_failure`. Three ways to refuse: a 404, a 429 with its
/// `Retry-After`, and a stream closed as soon as it opens.
#[test]
fn the_api_says_why_the_source_is_not_connected() {
    let not_found =
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 14\r\nConnection: close\r\n\r\nno such stream";
    let (source, url, at_ms) = refused_source(not_found);
    let error = source["last_failure"]["error"].as_str().unwrap();
    assert!(error.contains("HTTP 404"), "{error}");
    assert!(error.contains(&url), "{error}");
    assert!(error.contains("no such stream"), "{error}");
    // Retried within `max_backoff`.
    let next_try_ms = source["last_failure"]["next_try_ms"].as_i64().unwrap();
    assert!((at_ms..=at_ms + 1_000).contains(&next_try_ms), "{source}");

    let too_many = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 9\r\nConnection: close\r\n\r\nslow down";
    let (source, _, at_ms) = refused_source(too_many);
    let error = source["last_failure"]["error"].as_str().unwrap();
    assert!(error.contains("HTTP 429"), "{error}");
    assert!(error.contains("slow down"), "{error}");
    // The server's `Retry-After`, not the backoff.
    let next_try_ms = source["last_failure"]["next_try_ms"].as_i64().unwrap();
    assert_eq!(next_try_ms - at_ms, 2_000, "{source}");

    let closed_at_once =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n:ok\n\n";
    let (source, _, _) = refused_source(closed_at_once);
    let error = source["last_failure"]["error"].as_str().unwrap();
    assert!(error.contains("closed the stream within"), "{error}");
}

/// Why a connection ended reaches the API at once, also while NATS does not answer: the flush of what the
/// connection sent, which waits for NATS, comes after.
#[test]
fn the_api_says_why_the_source_is_not_connected_while_nats_is_away() {
    // The source holds its first connection until told to go on, then sends three events and closes it.
    let (asked, connected) = std::sync::mpsc::channel::<()>();
    let (go, told) = std::sync::mpsc::channel::<()>();
    let url = hand_written_source(move || {
        let _ = asked.send(());
        let _ = told.recv();
        let mut response =
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                .to_string();
        for i in 0..3 {
            response.push_str(&format!(
                "id: {i}\ndata: {{\"meta\":{{\"id\":\"{i}\",\"dt\":\"2026-12-07T00:00:0{i}Z\"}}}}\n\n"
            ));
        }
        response.into_bytes()
    });
    let h = Harness::new(LakeAt::Local, |t| {
        let mut source = toml::Table::new();
        source.insert("url".into(), url.clone().into());
        t.insert("source".into(), source.into());
    });
    let mut weir = h.weir(&[]);
    let api = weir.api(Duration::from_secs(60));
    connected
        .recv_timeout(Duration::from_secs(60))
        .expect("the ingest connects");
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &h.nats.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    go.send(()).unwrap();
    let started = Instant::now();
    let source = loop {
        let source = get_json(&api, "/api/v1/pipeline")["source"].clone();
        if !source["last_failure"].is_null() {
            break source;
        }
        if started.elapsed() > Duration::from_secs(30) {
            signal("-CONT");
            panic!("no failure reported while NATS is away: {source}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    signal("-CONT");
    let error = source["last_failure"]["error"].as_str().unwrap();
    assert!(error.contains("closed the stream within"), "{source}");
    assert!(
        source["last_failure"]["next_try_ms"].is_i64(),
        "retried, not given up: {source}"
    );
    weir.stop();
}

/// A source on a free loopback port that reads each request's head and writes `answer()` back, whole; returns
/// its URL.
fn hand_written_source(mut answer: impl FnMut() -> Vec<u8> + Send + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/v2/stream/recentchange",
        listener.local_addr().unwrap()
    );
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = reader.get_mut().write_all(&answer());
        }
    });
    url
}

/// Runs `weir run` against a source that answers every connection with `response`, until the API reports
/// two failed connections; returns the API's `source`, the source's URL and the failure's `at_ms`.
fn refused_source(response: &'static [u8]) -> (Value, String, i64) {
    let url = hand_written_source(move || response.to_vec());
    let h = Harness::new(LakeAt::Local, |t| {
        let mut source = toml::Table::new();
        source.insert("url".into(), url.clone().into());
        source.insert("min_backoff".into(), "200ms".into());
        source.insert("max_backoff".into(), "1s".into());
        t.insert("source".into(), source.into());
    });
    let mut weir = h.weir(&[]);
    let api = weir.api(Duration::from_secs(60));
    let started = Instant::now();
    let source = loop {
        let source = get_json(&api, "/api/v1/pipeline")["source"].clone();
        // Not connected: a source that closes at once is, for the moment each connection lasts.
        if source["reconnects"].as_u64().unwrap_or(0) >= 2
            && !source["last_failure"].is_null()
            && source["connected"] == false
        {
            break source;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no failed connection reported: {source}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let at_ms = source["last_failure"]["at_ms"].as_i64().unwrap();
    assert!(at_ms > now_ms() - 60_000, "{source}");
    // Retried, not given up: the process still serves, and is ready (the source is not part of readiness).
    assert_eq!(get_json(&api, "/ready")["ready"], true);
    weir.stop();
    (source, url, at_ms)
}
