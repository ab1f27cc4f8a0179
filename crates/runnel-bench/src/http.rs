//! `runnel-bench http`: the HTTP API of `runnel serve` beside the in-process API on the
//! same store.
//!
//! - **appends**: C clients, each appending one event per request to its own streams, over
//!   HTTP (keep-alive connections to a server in this process) beside C tasks calling
//!   `EventStore::append` directly. Target: HTTP ≥ 0.6× in-process.
//! - **HTTP floor**: the same clients sending `GET /healthz` (every layer, no store work):
//!   what a request alone costs the server, and from it the best append ratio any server
//!   work could reach on these cores.
//! - **SSE fan-out**: S subscribers on `GET /subscribe/all` (and one stalled subscriber
//!   that never reads) while W writers append N events in process; delivered events/s over
//!   all subscribers, p50/p99 append-to-delivery latency, peak RSS — beside the same
//!   fan-out through S in-process `subscribe_all` streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use runnel::app::ShutdownTrigger;
use runnel::connect::{open_stores, OpenMode, StoreUrl, Stores};
use runnel_core::{EventFilter, EventStore, ExpectedRevision, NewEvent, StreamName};
use runnel_server::{Server, ServerConfig};
use tokio::io::AsyncWriteExt;

use crate::cli::BenchHttpArgs;
use crate::exit::BadInput;
use crate::machine::{load_average, machine_lines};
use crate::output::print_line;
use crate::progress::{group_digits, CountSpinner};
use crate::report::{markdown, rate, Row, Target};
use crate::rss::{mib, peak_rss_bytes, reset_peak};

/// The sizes one run uses.
struct Sizes {
    same_process: bool,
    appends: u64,
    clients: usize,
    subscribers: usize,
    writers: usize,
    events: u64,
}

fn sizes(args: &BenchHttpArgs) -> Sizes {
    if args.quick {
        return Sizes {
            same_process: args.same_process,
            appends: 200,
            clients: 4,
            subscribers: 3,
            writers: 2,
            events: 50,
        };
    }
    Sizes {
        same_process: args.same_process,
        appends: args.appends,
        clients: args.clients,
        subscribers: args.subscribers,
        writers: args.writers,
        events: args.events,
    }
}

async fn stores_on(url: &StoreUrl) -> anyhow::Result<Stores> {
    Ok(open_stores(url, OpenMode::CreateIfMissing).await?)
}

fn event(n: u64) -> NewEvent {
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    NewEvent::json("Measured", &serde_json::json!({ "n": n, "sent_us": sent }))
}

/// Serves `stores` on 127.0.0.1:0; returns the base URL and the trigger that stops it.
async fn serve(stores: &Stores) -> anyhow::Result<(String, ShutdownTrigger)> {
    let (trigger, shutdown) = ShutdownTrigger::new();
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse()?,
        ..ServerConfig::local()
    };
    let server = Server::bind(config, Arc::clone(&stores.events)).await?;
    let base = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(shutdown));
    Ok((base, trigger))
}

/// Appends `total` events from `clients` tasks, one event per call; returns events/s.
async fn appends_in_process(events: Arc<dyn EventStore>, total: u64, clients: usize) -> f64 {
    let next = Arc::new(AtomicU64::new(0));
    let spinner = CountSpinner::start("in-process appends", "events", Arc::clone(&next));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (events, next) = (Arc::clone(&events), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let stream = StreamName::new(format!("Local-{c}x{}", n % 100)).expect("a name");
                events
                    .append(&stream, ExpectedRevision::Any, vec![event(n)])
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("a client");
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    spinner.finish();
    rate
}

/// What the HTTP clients send.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Requests {
    /// `POST /streams/{stream}`, one event each.
    Appends,
    /// `GET /healthz`: the same connections, layers and guard with no store work and no
    /// request body (the floor under any request's cost).
    Floor,
}

/// The same over HTTP: one keep-alive client per task.
async fn over_http(base: &str, total: u64, clients: usize, requests: Requests) -> f64 {
    let next = Arc::new(AtomicU64::new(0));
    let (label, unit) = match requests {
        Requests::Appends => ("HTTP appends", "events"),
        Requests::Floor => ("HTTP floor (GET /healthz)", "requests"),
    };
    let spinner = CountSpinner::start(label, unit, Arc::clone(&next));
    let rate = http_clients(base, total, clients, next, requests).await;
    spinner.finish();
    rate
}

async fn http_clients(
    base: &str,
    total: u64,
    clients: usize,
    next: Arc<AtomicU64>,
    requests: Requests,
) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let next = Arc::clone(&next);
        let base = base.to_string();
        tasks.push(tokio::spawn(async move {
            // The load generator shares the server's cores: one bare HTTP/1.1 keep-alive
            // connection, paths formatted once, bodies formatted directly, so what is
            // measured is the server's work.
            let authority = base
                .strip_prefix("http://")
                .expect("an http:// base URL")
                .to_string();
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .expect("connect to the server");
            tcp.set_nodelay(true).expect("TCP_NODELAY");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .expect("an HTTP/1.1 connection");
            tokio::spawn(conn);
            let paths: Vec<String> = (0..100).map(|i| format!("/streams/Http-{c}x{i}")).collect();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let (request, expected) = match requests {
                    Requests::Appends => {
                        let body = format!(
                            r#"[{{"type":"Measured","data":{{"n":{n},"sent_us":{}}}}}]"#,
                            now_us()
                        );
                        let request = hyper::Request::post(paths[(n % 100) as usize].as_str())
                            .header(hyper::header::HOST, authority.as_str())
                            .header("Runnel-Expected-Revision", "any")
                            .header(hyper::header::CONTENT_TYPE, "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .expect("a request");
                        (request, 201)
                    }
                    Requests::Floor => {
                        let request = hyper::Request::get("/healthz")
                            .header(hyper::header::HOST, authority.as_str())
                            .body(http_body_util::Full::new(bytes::Bytes::new()))
                            .expect("a request");
                        (request, 200)
                    }
                };
                sender.ready().await.expect("the connection is open");
                let response = sender.send_request(request).await.expect("a response");
                assert_eq!(response.status().as_u16(), expected, "a request over HTTP");
                // Read the body to the end: the connection is reused for the next request.
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .expect("the response body");
            }
        }));
    }
    for t in tasks {
        t.await.expect("a client");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// What one fan-out run measured.
struct FanOut {
    /// Deliveries (events × subscribers) per second, from the first append to the last
    /// delivery.
    delivered_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss: Option<u64>,
}

fn sent_us(data: &serde_json::Value) -> Option<u64> {
    data.get("sent_us").and_then(serde_json::Value::as_u64)
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Writers append `events` in process while `subscribers` read them; `open` starts one
/// subscriber that counts deliveries and records latencies until it has seen `events`.
async fn fan_out<F, Fut>(
    events_store: Arc<dyn EventStore>,
    s: &Sizes,
    label: &str,
    open: F,
) -> FanOut
where
    F: Fn(Arc<AtomicU64>, Arc<AtomicU64>, Arc<std::sync::Mutex<Histogram<u64>>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    reset_peak();
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
    ));
    let opened = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..s.subscribers {
        readers.push(tokio::spawn(open(
            Arc::clone(&opened),
            Arc::clone(&delivered),
            Arc::clone(&latencies),
        )));
    }
    // The writers start once every subscriber is open (each counts itself when its
    // subscription answered), so no subscriber's first events are catch-up reads.
    let until = Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::Relaxed) < s.subscribers as u64 {
        assert!(
            Instant::now() < until,
            "the subscribers did not open within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let spinner = CountSpinner::start(label, "deliveries", Arc::clone(&delivered));
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..s.writers {
        let (store, next, total) = (Arc::clone(&events_store), Arc::clone(&next), s.events);
        writers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let stream = StreamName::new(format!("Fan-{w}x{}", n % 50)).expect("a name");
                store
                    .append(&stream, ExpectedRevision::Any, vec![event(n)])
                    .await
                    .expect("append");
            }
        }));
    }
    for w in writers {
        w.await.expect("a writer");
    }
    for r in readers {
        r.await.expect("a subscriber");
    }
    let elapsed = start.elapsed().as_secs_f64();
    spinner.finish();
    let h = latencies.lock().expect("latencies");
    FanOut {
        delivered_per_sec: delivered.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        peak_rss: peak_rss_bytes(),
    }
}

/// A subscriber that connects, asks for `$all` and never reads: it must cost the server a
/// bounded amount however much is written.
async fn stalled(base: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "GET /subscribe/all HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    Ok(stream)
}

async fn side(url: &StoreUrl, s: &Sizes, what: &str) -> anyhow::Result<(Vec<Row>, String)> {
    let stores = stores_on(url).await?;
    let (base, trigger) = serve(&stores).await?;
    // Appends, in-process first then HTTP, then in-process again (the store grows: the
    // mean of the two in-process runs brackets the HTTP one).
    //
    // With a core to spare, the load generator runs in a process of its own on the last
    // core and this process (the server, and the in-process side) on the others, so the
    // clients' work is not taken from the server: both sides get the same cores.
    let pinned = Pinning::start(s.same_process);
    let c0 = stores.commit_stats();
    let local_a = appends_in_process(Arc::clone(&stores.events), s.appends / 2, s.clients).await;
    let c1 = stores.commit_stats();
    let http = match &pinned {
        Some(p) => {
            p.load(&base, s.appends, s.clients, Requests::Appends)
                .await?
        }
        None => over_http(&base, s.appends, s.clients, Requests::Appends).await,
    };
    let c2 = stores.commit_stats();
    // The floor: as many requests that do no store work, on the same connections' path.
    let floor = match &pinned {
        Some(p) => p.load(&base, s.appends, s.clients, Requests::Floor).await?,
        None => over_http(&base, s.appends, s.clients, Requests::Floor).await,
    };
    let local_b = appends_in_process(Arc::clone(&stores.events), s.appends / 2, s.clients).await;
    let c3 = stores.commit_stats();
    drop(pinned);
    let per_commit = |c: runnel::connect::CommitStats| c.events as f64 / c.commits.max(1) as f64;
    let local_commits = runnel::connect::CommitStats {
        commits: c1.since(c0).commits + c3.since(c2).commits,
        events: c1.since(c0).events + c3.since(c2).events,
    };
    let local = (local_a + local_b) / 2.0;
    let r = http / local;
    let how = match pinned_label(s.same_process) {
        Some(cores) => format!("; server on {cores}, load generator on its own core"),
        None => String::new(),
    };
    eprintln!(
        "{what}: events per commit {:.1} over HTTP, {:.1} in process",
        per_commit(c2.since(c1)),
        per_commit(local_commits)
    );
    let mut rows = vec![Row {
        scenario: format!(
            "{what}: appends, {} clients, 1 event per call{how}",
            s.clients
        ),
        runnel: rate(http, "events/s over HTTP"),
        baseline: rate(local, "events/s in process"),
        ratio: Some(r),
        target: Some(Target::at_least(r, 0.6)),
    }];
    // Were an append over HTTP to cost the server only the floor's request plus what the
    // same append costs in process, the HTTP rate would be 1 / (1/floor + 1/local): the
    // best ratio any server work can reach on these cores.
    let bound = (1.0 / (1.0 / floor + 1.0 / local)) / local;
    rows.push(Row {
        scenario: format!(
            "{what}: HTTP floor, {} clients, GET /healthz (no store work){how}",
            s.clients
        ),
        runnel: rate(floor, "requests/s over HTTP"),
        baseline: rate(local, "appends/s in process"),
        ratio: Some(floor / local),
        target: None,
    });
    eprintln!(
        "{what}: HTTP floor {floor:.0} requests/s; an append over HTTP costing the floor plus \
         the in-process append would reach at most {bound:.2}x"
    );

    // Fan-out over SSE, one stalled subscriber besides.
    let head = stores.events.head_position().await?;
    let _stalled = stalled(&base).await?;
    let total = s.events;
    let sse = {
        let base = base.clone();
        fan_out(
            Arc::clone(&stores.events),
            s,
            "SSE fan-out",
            move |opened, delivered, latencies| {
                let url = format!("{base}/subscribe/all?after={}", head.get());
                async move {
                    let r = reqwest::Client::new()
                        .get(url)
                        .send()
                        .await
                        .expect("a subscription");
                    opened.fetch_add(1, Ordering::Relaxed);
                    let mut body = r.bytes_stream();
                    let mut buf = String::new();
                    let mut seen = 0u64;
                    while seen < total {
                        let Some(chunk) = body.next().await else {
                            break;
                        };
                        buf.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
                        while let Some(end) = buf.find("\n\n") {
                            let frame: String = buf.drain(..end + 2).collect();
                            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: "))
                            else {
                                continue;
                            };
                            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                                continue;
                            };
                            if let Some(sent) = sent_us(&v["data"]) {
                                let _ = latencies
                                    .lock()
                                    .expect("latencies")
                                    .record(now_us().saturating_sub(sent).max(1));
                                seen += 1;
                                delivered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            },
        )
        .await
    };
    let head = stores.events.head_position().await?;
    let local = {
        let store = Arc::clone(&stores.events);
        fan_out(
            Arc::clone(&stores.events),
            s,
            "in-process fan-out",
            move |opened, delivered, latencies| {
                let mut events = Arc::clone(&store).subscribe_all(head, EventFilter::all());
                async move {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let mut seen = 0u64;
                    while seen < total {
                        let Some(e) = events.next().await else { break };
                        let e = e.expect("an event");
                        let v: serde_json::Value =
                            serde_json::from_slice(&e.data).unwrap_or_default();
                        if let Some(sent) = sent_us(&v) {
                            let _ = latencies
                                .lock()
                                .expect("latencies")
                                .record(now_us().saturating_sub(sent).max(1));
                            seen += 1;
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            },
        )
        .await
    };
    let r = sse.delivered_per_sec / local.delivered_per_sec;
    rows.push(Row {
        scenario: format!(
            "{what}: SSE fan-out, {} subscribers (+1 stalled), {} writers, {} events",
            s.subscribers,
            s.writers,
            group_digits(s.events as f64)
        ),
        runnel: format!(
            "{} deliveries/s, p50 {:.1} ms, p99 {:.1} ms",
            group_digits(sse.delivered_per_sec),
            sse.p50_ms,
            sse.p99_ms
        ),
        baseline: format!(
            "{} deliveries/s, p50 {:.1} ms, p99 {:.1} ms (in-process subscribe_all)",
            group_digits(local.delivered_per_sec),
            local.p50_ms,
            local.p99_ms
        ),
        ratio: Some(r),
        target: None,
    });
    let rss = format!(
        "Peak RSS, {what}: SSE fan-out {}, in-process fan-out {}\n",
        sse.peak_rss.map_or_else(|| "unknown".into(), mib),
        local.peak_rss.map_or_else(|| "unknown".into(), mib),
    );
    trigger.fire();
    Ok((rows, rss))
}

/// Runs the benchmark: SQLite on a fresh file under `--dir`, and PostgreSQL in a fresh
/// schema when `postgres` is given.
pub async fn bench(args: BenchHttpArgs, postgres: Option<String>) -> anyhow::Result<()> {
    for (flag, value, max) in [
        ("--clients", args.clients as u64, 1024),
        ("--subscribers", args.subscribers as u64, 1000),
        ("--writers", args.writers as u64, 1024),
        ("--appends", args.appends, 100_000_000),
        ("--events", args.events, 100_000_000),
    ] {
        if value == 0 || value > max {
            return Err(BadInput(format!("{flag} must be in 1..={max}")).into());
        }
    }
    let s = sizes(&args);
    let dir = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(|| ".".into()))?;
    let load_before = load_average();
    let (mut rows, mut rss) =
        side(&StoreUrl::sqlite(dir.path().join("http.db")), &s, "SQLite").await?;
    if let Some(url) = postgres {
        let schema = format!("bench_http_{}", crate::saga::schema_suffix());
        let separator = if url.contains('?') { '&' } else { '?' };
        let pg = StoreUrl::parse(&format!("{url}{separator}schema={schema}"))?;
        let result = side(&pg, &s, "PostgreSQL").await;
        crate::saga::drop_schemas(&url, &[&schema]).await?;
        let (more, more_rss) = result?;
        rows.extend(more);
        rss.push_str(&more_rss);
    }
    let load_after = load_average();
    let mut out = format!(
        "HTTP API (runnel serve, in this process, no API keys, no metrics) beside the \
         in-process API on the same store: {} appends by {} clients; SSE fan-out of {} events \
         appended in process by {} writers to {} subscribers of /subscribe/all plus one that \
         never reads; latency = delivery time minus the time the writer built the event\n",
        group_digits(s.appends as f64),
        s.clients,
        group_digits(s.events as f64),
        s.writers,
        s.subscribers,
    );
    out.push_str(&machine_lines(load_before, load_after));
    out.push_str(&rss);
    out.push('\n');
    out.push_str(&markdown(&rows));
    print_line(out.trim_end())
}

/// The load generator in a process of its own: this process on every core but the last,
/// the generator (`runnel-bench http-load`) on the last. `None` when there is a single
/// core, `taskset` is missing, or `--same-process` asked for the single-process run.
struct Pinning {
    last: usize,
    all: String,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pinned_label(same_process: bool) -> Option<String> {
    if same_process || cores() < 2 || which("taskset").is_none() {
        return None;
    }
    let n = cores();
    Some(if n == 2 {
        "core 0".to_string()
    } else {
        format!("cores 0-{}", n - 2)
    })
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn taskset(args: &[String]) -> bool {
    std::process::Command::new("taskset")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Pinning {
    fn start(same_process: bool) -> Option<Pinning> {
        pinned_label(same_process)?;
        let n = cores();
        let last = n - 1;
        let rest = if last == 1 {
            "0".to_string()
        } else {
            format!("0-{}", last - 1)
        };
        // Every thread of this process (`-a`); threads started later inherit it.
        let pid = std::process::id().to_string();
        if !taskset(&["-a".into(), "-p".into(), "-c".into(), rest, pid]) {
            eprintln!("note: taskset could not pin the server; measuring in one process");
            return None;
        }
        Some(Pinning {
            last,
            all: format!("0-{last}"),
        })
    }

    /// Runs the load generator on the last core; its requests per second.
    async fn load(
        &self,
        base: &str,
        total: u64,
        clients: usize,
        requests: Requests,
    ) -> anyhow::Result<f64> {
        let exe = std::env::current_exe()?;
        let out = tokio::process::Command::new("taskset")
            .arg("-c")
            .arg(self.last.to_string())
            .arg(exe)
            .args([
                "http-load",
                "--url",
                base,
                "--appends",
                &total.to_string(),
                "--clients",
                &clients.to_string(),
            ])
            .args((requests == Requests::Floor).then_some("--floor"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "the load generator failed: {}",
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim())?;
        v["events_per_sec"]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("the load generator printed {text}"))
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        let pid = std::process::id().to_string();
        taskset(&["-a".into(), "-p".into(), "-c".into(), self.all.clone(), pid]);
    }
}

/// `runnel-bench http-load`: the append clients alone (or, with `floor`, `GET /healthz`
/// clients), against a server elsewhere; prints `{"events_per_sec": …}` (requests/s).
pub async fn load(url: &str, appends: u64, clients: usize, floor: bool) -> anyhow::Result<()> {
    let requests = if floor {
        Requests::Floor
    } else {
        Requests::Appends
    };
    let rate = http_clients(url, appends, clients, Arc::new(AtomicU64::new(0)), requests).await;
    println!("{}", serde_json::json!({ "events_per_sec": rate }));
    Ok(())
}
