//! A NoCloud seed served over HTTP to the guest.
//!
//! cloud-init's NoCloud datasource (`ds=nocloud-net;s=http://10.0.2.2:PORT/`) fetches `meta-data`
//! and `user-data` from a URL; QEMU's user-mode network shows the host's 127.0.0.1 to the
//! guest as 10.0.2.2. Serving the seed (instead of building a `cidata` ISO) needs no extra host
//! tools, and real cloud images and kiln's tiny test guest read it the same way. The server
//! binds 127.0.0.1 only, on a free port, and lives until the machine is destroyed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The documents of one seed.
#[derive(Debug, Clone)]
pub(crate) struct Seed {
    pub(crate) user_data: String,
    pub(crate) meta_data: String,
}

impl Seed {
    /// The cloud-config that installs `public_key` for the SSH user.
    pub(crate) fn for_key(instance_id: &str, hostname: &str, user: &str, public_key: &str) -> Seed {
        let mut user_data = String::from("#cloud-config\n");
        if user == "root" {
            // Cloud images refuse root logins by default; the file asked for root.
            user_data.push_str("disable_root: false\n");
        }
        user_data.push_str("ssh_authorized_keys:\n");
        user_data.push_str(&format!("  - {public_key}\n"));
        Seed {
            user_data,
            meta_data: format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n"),
        }
    }
}

/// A running seed server. Dropping it stops the server.
#[derive(Debug)]
pub(crate) struct SeedServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SeedServer {
    pub(crate) async fn start(seed: Seed) -> std::io::Result<SeedServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let seed = Arc::new(seed);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seed = seed.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let seed = seed.clone();
                        async move { Ok::<_, Infallible>(respond(&seed, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(SeedServer { addr, task })
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The NoCloud source as the guest sees it.
    pub(crate) fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}/", self.addr.port())
    }
}

impl Drop for SeedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(seed: &Seed, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match req.uri().path().trim_start_matches('/') {
        "user-data" => Some(seed.user_data.clone()),
        "meta-data" => Some(seed.meta_data.clone()),
        // cloud-init asks for these too; empty documents mean "nothing".
        "vendor-data" | "network-config" => Some(String::new()),
        _ => None,
    };
    match body {
        Some(body) => Response::new(Full::new(Bytes::from(body))),
        None => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(port: u16, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_user_and_meta_data_on_loopback() {
        let seed = Seed::for_key("kiln-1", "tiny", "root", "ssh-ed25519 AAAA test");
        let server = SeedServer::start(seed).await.unwrap();
        assert!(server.guest_url().starts_with("http://10.0.2.2:"));
        let ud = get(server.port(), "/user-data").await;
        assert!(ud.starts_with("HTTP/1.0 200"), "{ud}");
        assert!(ud.ends_with(
            "#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - ssh-ed25519 AAAA test\n"
        ));
        let md = get(server.port(), "/meta-data").await;
        assert!(md.ends_with("instance-id: kiln-1\nlocal-hostname: tiny\n"));
        assert!(get(server.port(), "/etc/passwd").await.contains(" 404 "));
    }
}
