//! Minimal HTTP/1.1 and UDP clients for tests. They run in the calling thread's network
//! namespace: wrap them in [`crate::netns::in_netns`] (or use the `Sandbox` helpers, which
//! do) to send from a client or pod namespace. Blocking std sockets, no runtime: a request
//! costs a thread switch, not a process spawn.
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

/// Default connect and read timeout of a request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP request. `Connection: close` is sent, so one request per connection.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub method: String,
    pub addr: SocketAddr,
    pub path: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl HttpRequest {
    pub fn get(addr: SocketAddr, path: &str) -> Self {
        Self {
            method: "GET".into(),
            addr,
            path: path.into(),
            host: None,
            headers: Vec::new(),
            body: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    #[must_use]
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.into());
        self
    }

    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request from the current thread's network namespace.
    pub fn send(&self) -> Result<HttpResponse> {
        let mut stream = TcpStream::connect_timeout(&self.addr, self.timeout)
            .with_context(|| format!("connect to {}", self.addr))?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let local = stream.local_addr()?;
        let host = self.host.clone().unwrap_or_else(|| self.addr.to_string());
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: lb-tests\r\n",
            self.method, self.path
        );
        for (k, v) in &self.headers {
            let _ = write!(head, "{k}: {v}\r\n");
        }
        if !self.body.is_empty() || self.method != "GET" {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&self.body)?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .with_context(|| format!("read answer from {}", self.addr))?;
        let mut resp = HttpResponse::parse(&raw).with_context(|| {
            format!(
                "answer from {}: {:?}",
                self.addr,
                String::from_utf8_lossy(&raw)
            )
        })?;
        resp.local_addr = Some(local);
        Ok(resp)
    }
}

/// A parsed HTTP/1.x response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The local address the request was sent from.
    pub local_addr: Option<SocketAddr>,
}

impl HttpResponse {
    pub fn parse(raw: &[u8]) -> Result<Self> {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow!("no end of headers"))?;
        let head = std::str::from_utf8(&raw[..split])?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let rest = &raw[split + 4..];
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(rest)?
        } else {
            rest.to_vec()
        };
        Ok(Self {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            local_addr: None,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:?}", self.body))
    }

    /// The `pod` field of a pod server's answer.
    pub fn pod(&self) -> Result<String> {
        let v = self.json()?;
        v["pod"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no pod in {:?}", self.body))
    }

    /// The `client` field of a pod server's answer: the peer address the pod saw.
    pub fn client(&self) -> Result<SocketAddr> {
        let v = self.json()?;
        v["client"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no client in {:?}", self.body))
    }
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size"))?;
        let size_str = std::str::from_utf8(&data[..eol])?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Sends one UDP datagram from the current thread's namespace and returns the answer (as
/// text) and who sent it.
pub fn udp_request(
    addr: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<(String, SocketAddr)> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(payload, addr)
        .with_context(|| format!("send UDP to {addr}"))?;
    let mut buf = vec![0u8; 65_536];
    let (n, from) = sock
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP answer from {addr} within {timeout:?}"))?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = HttpResponse::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "hi"));
        let r = HttpResponse::parse(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "abcde"));
        assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    }
}
