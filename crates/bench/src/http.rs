//! A minimal blocking HTTP/1.1 client for the cold-start driver: one keep-alive connection per
//! server, one request at a time, JSON bodies, `Content-Length` or chunked responses.
//!
//! Blocking on purpose: the driver makes a few hundred strictly sequential requests and times each
//! one; a thread waiting on a socket adds nothing to that time, an async runtime's scheduling could.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A response: the status code and the whole body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A server at `http://host:port`, with the headers every request carries.
#[derive(Debug)]
pub struct Client {
    authority: String,
    headers: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// `base`: `http://host:port` (no path); `bearer`: the access token.
    pub fn new(base: &str, bearer: &str) -> Result<Client> {
        let authority = base
            .strip_prefix("http://")
            .with_context(|| format!("{base:?}: not an http:// address"))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("{base:?}: expected http://host:port");
        }
        let headers = format!(
            "Host: {authority}\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\n"
        );
        Ok(Client {
            authority: authority.to_owned(),
            headers,
            conn: None,
        })
    }

    /// One request with a JSON body; the response is read to its end.
    pub fn request(&mut self, method: &str, path: &str, body: &str) -> Result<Response> {
        let message = format!(
            "{method} {path} HTTP/1.1\r\n{}Content-Length: {}\r\n\r\n{body}",
            self.headers,
            body.len()
        );
        let reused = self.conn.is_some();
        match self.exchange(&message) {
            Ok(response) => Ok(response),
            // A kept-alive connection the server closed while idle fails before an answer; the
            // request is sent again once, on a new connection. Had the first one reached a handler,
            // the cold-start check on the second answer (a warm start) would say so.
            Err(Failure::BeforeAnswer(_)) if reused => {
                self.conn = None;
                self.exchange(&message).map_err(Failure::into_error)
            }
            Err(failure) => Err(failure.into_error()),
        }
        .with_context(|| format!("{method} http://{}{path}", self.authority))
    }

    fn exchange(&mut self, message: &str) -> Result<Response, Failure> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(&self.authority)
                    .map_err(|e| Failure::BeforeAnswer(e.into()))?;
                // One write per request below; no Nagle delay waiting for an ACK.
                stream
                    .set_nodelay(true)
                    .map_err(|e| Failure::BeforeAnswer(e.into()))?;
                stream
                    .set_read_timeout(Some(TIMEOUT))
                    .map_err(|e| Failure::BeforeAnswer(e.into()))?;
                stream
                    .set_write_timeout(Some(TIMEOUT))
                    .map_err(|e| Failure::BeforeAnswer(e.into()))?;
                self.conn.insert(BufReader::new(stream))
            }
        };
        let result = send_and_read(conn, message);
        match &result {
            Ok((_, keep_alive)) if *keep_alive => {}
            _ => self.conn = None,
        }
        result.map(|(response, _)| response)
    }
}

/// How a request failed: before any byte of an answer (it may be retried on a fresh connection) or
/// after.
#[derive(Debug)]
enum Failure {
    BeforeAnswer(anyhow::Error),
    During(anyhow::Error),
}

impl Failure {
    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::BeforeAnswer(e) | Failure::During(e) => e,
        }
    }
}

/// Sends one request and reads its response; also says whether the connection stays usable.
fn send_and_read(
    conn: &mut BufReader<TcpStream>,
    message: &str,
) -> Result<(Response, bool), Failure> {
    conn.get_mut()
        .write_all(message.as_bytes())
        .map_err(|e| Failure::BeforeAnswer(e.into()))?;
    let mut status_line = String::new();
    match conn.read_line(&mut status_line) {
        Ok(0) => {
            return Err(Failure::BeforeAnswer(anyhow::anyhow!(
                "the server closed the connection"
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(Failure::BeforeAnswer(e.into())),
    }
    read_response(conn, &status_line).map_err(Failure::During)
}

fn read_response(conn: &mut impl BufRead, status_line: &str) -> Result<(Response, bool)> {
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status_line:?}");
    }
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = version == "HTTP/1.1";
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            bail!("the connection closed in the headers");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("not a header: {line:?}")
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.parse::<usize>().context("Content-Length")?),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        read_chunked(conn, &mut body)?;
    } else if let Some(length) = length {
        body.resize(length, 0);
        conn.read_exact(&mut body)?;
    } else if status != 204 && status != 304 {
        // No length: the body runs to the end of the connection.
        conn.read_to_end(&mut body)?;
        keep_alive = false;
    }
    Ok((Response { status, body }, keep_alive))
}

fn read_chunked(conn: &mut impl BufRead, body: &mut Vec<u8>) -> Result<()> {
    loop {
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size.trim(), 16)
            .with_context(|| format!("chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if conn.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..])?;
        line.clear();
        conn.read_line(&mut line)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::thread;

    fn read(raw: &str) -> (Response, bool) {
        let mut reader = raw.as_bytes();
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        read_response(&mut reader, &status_line).unwrap()
    }

    #[test]
    fn content_length_chunked_and_close() {
        let (r, keep) = read("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        assert_eq!((r.status, r.body.as_slice(), keep), (200, &b"{}"[..], true));
        let (r, keep) = read(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        );
        assert_eq!(
            (r.status, r.body.as_slice(), keep),
            (404, &b"abcde"[..], true)
        );
        let (r, keep) = read("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end");
        assert_eq!((r.body.as_slice(), keep), (&b"to the end"[..], false));
    }

    /// A server that answers one request per connection and then closes it: the client's second
    /// request finds its kept-alive connection closed and is sent again on a new one.
    #[test]
    fn resends_once_when_a_kept_alive_connection_was_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let mut requests = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                while reader.read_line(&mut head).unwrap() > 2 {}
                let mut body = [0u8; 2];
                reader.read_exact(&mut body).unwrap();
                requests.push(head.lines().next().unwrap().to_owned());
                reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{\"a\"")
                    .unwrap();
            }
            requests
        });
        let mut client = Client::new(&format!("http://{address}"), "t").unwrap();
        for path in ["/one", "/two"] {
            let response = client.request("POST", path, "{}").unwrap();
            assert_eq!(
                (response.status, response.body.as_slice()),
                (200, &b"{\"a\""[..])
            );
        }
        assert_eq!(
            server.join().unwrap(),
            ["POST /one HTTP/1.1", "POST /two HTTP/1.1"]
        );
    }

    #[test]
    fn only_plain_http_addresses() {
        assert!(Client::new("https://example.com", "t").is_err());
        assert!(Client::new("http://127.0.0.1:1/api", "t").is_err());
        assert!(Client::new("http://127.0.0.1:1", "t").is_ok());
    }
}
