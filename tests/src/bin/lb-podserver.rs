//! The sandbox's pod: an HTTP server that answers with its own name and the peer address it
//! saw (so tests see which replica answered and whether the source address was kept), a UDP
//! echo of the same, and, for the frontend, a call to the backend whose answer it includes.
//!
//! `lb-podserver --name NAME --http-port P [--udp-port P] [--backend URL]`
//!
//! HTTP: any method and path answers 200 with
//! `{"pod","client","path","method","host","headers",["backend"|"backend_error"]}`;
//! `/status/N` answers status N, `/sleep/MS` waits MS milliseconds first.
//! UDP: each datagram is answered with `<pod> <client addr>`.
//! Prints `lb-podserver NAME listening ...` once its sockets are bound.
#![forbid(unsafe_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use lb_tests::client::HttpRequest;
use serde_json::{Map, Value, json};

struct Config {
    name: String,
    http_port: u16,
    udp_port: Option<u16>,
    backend: Option<String>,
}

fn parse_args() -> Result<Config> {
    let mut name = None;
    let mut http_port = None;
    let mut udp_port = None;
    let mut backend = std::env::var("BACKEND_ENDPOINT").ok();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--name" => name = Some(value()?),
            "--http-port" => http_port = Some(value()?.parse()?),
            "--udp-port" => udp_port = Some(value()?.parse()?),
            "--backend" => backend = Some(value()?),
            "-h" | "--help" => {
                println!(
                    "usage: lb-podserver --name NAME --http-port P [--udp-port P] [--backend URL]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(Config {
        name: name.ok_or_else(|| anyhow!("--name is required"))?,
        http_port: http_port.ok_or_else(|| anyhow!("--http-port is required"))?,
        udp_port,
        backend: backend.filter(|b| !b.is_empty()),
    })
}

fn main() -> Result<()> {
    let cfg = Arc::new(parse_args()?);
    let http = TcpListener::bind(("0.0.0.0", cfg.http_port))
        .with_context(|| format!("bind TCP port {}", cfg.http_port))?;
    let udp = match cfg.udp_port {
        Some(p) => {
            Some(UdpSocket::bind(("0.0.0.0", p)).with_context(|| format!("bind UDP port {p}"))?)
        }
        None => None,
    };
    println!(
        "lb-podserver {} listening http={} udp={}",
        cfg.name,
        http.local_addr()?,
        udp.as_ref()
            .and_then(|u| u.local_addr().ok())
            .map_or_else(|| "-".to_owned(), |a| a.to_string())
    );
    if let Some(udp) = udp {
        let cfg = Arc::clone(&cfg);
        thread::spawn(move || udp_echo(&udp, &cfg.name));
    }
    for stream in http.incoming() {
        let Ok(stream) = stream else { continue };
        let cfg = Arc::clone(&cfg);
        thread::spawn(move || {
            let _ = serve_connection(stream, &cfg);
        });
    }
    Ok(())
}

/// Answers `<name> <client address>`, padded with spaces to the request's length when the
/// request is longer, so that a datagram larger than the MTU gets one as large back (both
/// directions fragmented).
fn udp_echo(sock: &UdpSocket, name: &str) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let mut answer = format!("{name} {from}").into_bytes();
        if answer.len() < n {
            answer.resize(n, b' ');
        }
        let _ = sock.send_to(&answer, from);
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
}

/// HTTP/1.x with keep-alive (an ingress pools its upstream connections).
fn serve_connection(stream: TcpStream, cfg: &Config) -> Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(Duration::from_mins(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(req) = read_request(&mut reader)? else {
            return Ok(());
        };
        let (status, body) = answer(&req, peer, cfg);
        let reason = if status == 200 { "OK" } else { "Status" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            body.len(),
            if req.close { "close" } else { "keep-alive" }
        );
        writer.write_all(head.as_bytes())?;
        writer.write_all(body.as_bytes())?;
        if req.close {
            return Ok(());
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or("/").to_owned();
    let version = parts.next().unwrap_or("HTTP/1.0").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    if let Some(len) = get("content-length").and_then(|l| l.parse::<u64>().ok()) {
        std::io::copy(&mut reader.by_ref().take(len), &mut std::io::sink())?;
    }
    let close = match get("connection").as_deref() {
        Some("close") => true,
        Some("keep-alive") => false,
        _ => version == "HTTP/1.0",
    };
    Ok(Some(Request {
        method,
        path,
        headers,
        close,
    }))
}

fn answer(req: &Request, peer: SocketAddr, cfg: &Config) -> (u16, String) {
    let mut status = 200;
    if let Some(code) = req.path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(400);
    }
    if let Some(ms) = req
        .path
        .strip_prefix("/sleep/")
        .and_then(|m| m.parse().ok())
    {
        thread::sleep(Duration::from_millis(ms));
    }
    let headers: Map<String, Value> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let host = req
        .headers
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.clone());
    let mut body = json!({
        "pod": cfg.name,
        "client": peer.to_string(),
        "path": req.path,
        "method": req.method,
        "host": host,
        "headers": headers,
    });
    if let Some(backend) = &cfg.backend {
        match call_backend(backend, &req.path) {
            Ok(v) => body["backend"] = v,
            Err(e) => {
                status = 502;
                body["backend_error"] = Value::String(format!("{e:#}"));
            }
        }
    }
    (status, body.to_string())
}

/// GET `path` on the backend (`http://host[:port]`), resolved with the pod's /etc/hosts.
fn call_backend(base: &str, path: &str) -> Result<Value> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("backend {base} is not http://"))?
        .trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse()?),
        None => (authority, 80),
    };
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    let resp = HttpRequest::get(addr, path)
        .host(authority)
        .timeout(Duration::from_secs(3))
        .send()?;
    resp.json()
}
