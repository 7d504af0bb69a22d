//! The web UI in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol (a websocket), against the coordinator's HTTP side of a two-node harness
//! cluster. The overview lists the nodes and services; after `drover scale`, the page shows
//! the new count without a reload (it follows the event stream); a scale from the page is
//! refused with a read token, with the refusal shown, and works with an operator token,
//! each after its confirmation; a replica's detail shows its recent output; a node is
//! cordoned from the page. Screenshots are kept under target/ui-screenshots/.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::{DroverProcess, build_images, free_port, success, unique_node, wait_for};
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A headless Chromium with one page, driven over the DevTools protocol; killed when dropped.
struct Browser {
    child: Child,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let port = free_port();
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                // The coordinator's certificate chains to the cluster's own CA.
                "--ignore-certificate-errors",
                "--window-size=1280,900",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromium (Debian's chromium package; .ci/run installs it)");
        let mut target = Value::Null;
        wait_for(
            "Chromium's DevTools endpoint",
            Duration::from_secs(30),
            || {
                let out = Command::new("curl")
                    .args(["-s", "--max-time", "2"])
                    .arg(format!("http://127.0.0.1:{port}/json/list"))
                    .output()
                    .expect("curl");
                target = serde_json::from_slice::<Value>(&out.stdout)
                    .ok()
                    .and_then(|list| {
                        list.as_array()?
                            .iter()
                            .find(|t| t["type"] == "page")
                            .cloned()
                    })
                    .unwrap_or(Value::Null);
                target["webSocketDebuggerUrl"].is_string()
            },
        );
        let url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("websocket url")
            .to_string();
        let (page, _) = tungstenite::connect(url).expect("connect to the page");
        Browser {
            child,
            page,
            next_id: 0,
            _profile: profile,
        }
    }

    /// One DevTools call: its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::text(request.to_string()))
            .expect("send to the browser");
        loop {
            let message = self.page.read().expect("read from the browser");
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// The value of `expression` in the page (promises awaited).
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    fn wait_until(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval(expression) != Value::Bool(true) {
            if Instant::now() > deadline {
                let page = self.eval("document.body ? document.body.innerText : ''");
                panic!("timed out waiting for {what}; the page says:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the page, kept as target/ui-screenshots/`name`.png.
    fn screenshot(&mut self, name: &str) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().expect("screenshot data").as_bytes())
            .expect("base64 PNG");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The desired replicas of `workload`, as `drover status` says.
fn desired(coordinator: &DroverProcess, workload: &str) -> u64 {
    coordinator
        .try_cli_json(&["status", workload])
        .and_then(|s| s["desired"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_ui_shows_the_cluster_live_and_scales_with_an_operator_token_only() {
    build_images();
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator_dir = dir.path().join("coordinator");
    std::fs::create_dir_all(&coordinator_dir).expect("dir");
    let coordinator = DroverProcess::coordinator(&coordinator_dir);
    let nodes = [unique_node("ui"), unique_node("ui")];
    let agents: Vec<DroverProcess> = ["127.0.0.214", "127.0.0.215"]
        .iter()
        .zip(&nodes)
        .map(|(ip, node)| {
            let agent_dir = dir.path().join(ip);
            std::fs::create_dir_all(&agent_dir).expect("dir");
            DroverProcess::agent_on(&agent_dir, ip, node, &coordinator)
        })
        .collect();
    drover_tests::apply_web(&coordinator, dir.path(), 2, "");
    let token = |name: &str, role: &str| {
        let out = coordinator.cli(&["token", "create", name, "--role", role]);
        success(&out, "drover token create").trim().to_string()
    };
    let (read, operator) = (token("ui-reader", "read"), token("ui-operator", "operator"));

    let mut browser = Browser::start();
    let base = format!("https://127.0.0.1:{}/ui/", coordinator.http_port);
    browser.navigate(&format!("{base}#token={read}"));
    browser.wait_until(
        "the overview with both nodes and the service",
        &format!(
            "!!document.querySelector('[data-node=\"{}\"]') && !!document.querySelector('[data-node=\"{}\"]') \
             && !!document.querySelector('[data-service=\"web\"]') && !!document.querySelector('[data-workload=\"web\"]')",
            nodes[0], nodes[1]
        ),
    );
    // The token left the address bar; the page is following the event stream.
    assert_eq!(browser.eval("location.hash"), json!(""));
    browser.wait_until(
        "following events",
        "document.getElementById('live').textContent === 'live'",
    );
    browser.screenshot("overview");

    // A scale from the command line shows without a reload.
    browser.eval("window.loadedOnce = 'still here'");
    success(
        &coordinator.cli(&["scale", "web", "3"]),
        "drover scale web 3",
    );
    let ready = "document.querySelector('[data-workload=\"web\"] .ready').textContent";
    browser.wait_until("the new count", &format!("{ready}.endsWith('/ 3')"));
    assert_eq!(
        browser.eval("window.loadedOnce"),
        json!("still here"),
        "no reload"
    );
    browser.wait_until("three healthy", &format!("{ready} === '3 / 3'"));

    // From the page with the read token: confirmed, then refused, and nothing changes.
    let scale_to = |n: u32| {
        format!(
            "document.querySelector('input[aria-label=\"replicas of web\"]').value = '{n}'; \
             document.querySelector('[data-scale=\"web\"]').click(); true"
        )
    };
    browser.eval(&scale_to(1));
    browser.wait_until(
        "the confirmation",
        "document.getElementById('confirm').open",
    );
    assert_eq!(
        browser.eval("document.getElementById('confirm-text').textContent"),
        json!("Scale web to 1 replicas?")
    );
    browser.eval("document.getElementById('confirm-ok').click(); true");
    browser.wait_until(
        "the refusal",
        "document.getElementById('error').textContent.includes('needs the operator role')",
    );
    browser.screenshot("refused");
    assert_eq!(desired(&coordinator, "web"), 3);

    // Cancelled: nothing is sent.
    browser.eval(&scale_to(1));
    browser.wait_until(
        "the confirmation",
        "document.getElementById('confirm').open",
    );
    browser.eval("document.getElementById('confirm-cancel').click(); true");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(desired(&coordinator, "web"), 3);

    // With an operator token, entered in the page: it scales.
    browser.eval(&format!(
        "document.getElementById('token').value = '{operator}'; \
         document.getElementById('login').requestSubmit(); true"
    ));
    browser.eval(&scale_to(2));
    browser.wait_until(
        "the confirmation",
        "document.getElementById('confirm').open",
    );
    browser.eval("document.getElementById('confirm-ok').click(); true");
    wait_for("the scale from the page", Duration::from_secs(30), || {
        desired(&coordinator, "web") == 2
    });
    browser.wait_until("the page's count", &format!("{ready}.endsWith('/ 2')"));
    assert_eq!(
        browser.eval("document.getElementById('error').hidden"),
        json!(true)
    );
    browser.screenshot("scaled");

    // One replica's detail, with its recent output as its agent reads it.
    for _ in 0..6 {
        let _ = drover_tests::try_http_get("127.0.0.214:80");
    }
    browser.eval("document.querySelector('[data-replica].healthy').click(); true");
    browser.wait_until(
        "a replica's detail with its output",
        "!document.getElementById('detail').hidden && \
         document.getElementById('detail-log').textContent.includes('response:200')",
    );
    browser.screenshot("replica");

    // Cordon a node from the page, confirmed.
    browser.eval(&format!(
        "document.querySelector('[data-node-action=\"{}/cordon\"]').click(); true",
        nodes[1]
    ));
    browser.wait_until(
        "the confirmation",
        "document.getElementById('confirm').open",
    );
    browser.eval("document.getElementById('confirm-ok').click(); true");
    wait_for("the node cordoned", Duration::from_secs(30), || {
        coordinator
            .try_cli_json(&["nodes"])
            .and_then(|n| n.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|n| n["id"] == nodes[1].as_str() && n["cordoned"] == true)
    });
    browser.wait_until(
        "the node shown cordoned",
        &format!(
            "document.querySelector('[data-node=\"{}\"]').textContent.includes('cordoned')",
            nodes[1]
        ),
    );
    let events = coordinator.cli(&["events"]);
    let events = success(&events, "drover events");
    assert!(
        events.contains("ui-operator"),
        "the scale is the operator token's: {events}"
    );
    drop(browser);
    drop(agents);
}
