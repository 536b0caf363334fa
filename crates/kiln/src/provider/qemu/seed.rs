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
use zeroize::Zeroizing;

use crate::provider::HostKey;

/// The documents of one seed. The user-data may hold the guest's private host key, so it is
/// wiped from memory when the seed goes and never shown by `Debug`.
#[derive(Clone)]
pub(crate) struct Seed {
    pub(crate) user_data: Zeroizing<String>,
    pub(crate) meta_data: String,
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed")
            .field("meta_data", &self.meta_data)
            .finish_non_exhaustive()
    }
}

impl Seed {
    /// The cloud-config that installs `public_key` for the SSH user and, when given,
    /// `host_key` as the guest's only SSH host key (cloud-init's `cc_ssh` honours `ssh_keys`;
    /// `ssh_genkeytypes: []` stops it from adding others, so the guest can present no key
    /// but the pinned one).
    pub(crate) fn for_key(
        instance_id: &str,
        hostname: &str,
        user: &str,
        public_key: &str,
        host_key: Option<&HostKey>,
    ) -> Seed {
        let mut user_data = Zeroizing::new(String::from("#cloud-config\n"));
        if user == "root" {
            // Cloud images refuse root logins by default; the file asked for root.
            user_data.push_str("disable_root: false\n");
        }
        user_data.push_str("ssh_authorized_keys:\n");
        user_data.push_str(&format!("  - {public_key}\n"));
        if let Some(host_key) = host_key {
            user_data.push_str("ssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n");
            user_data.push_str("  ed25519_private: |\n");
            for line in host_key.private_openssh.lines() {
                user_data.push_str("    ");
                user_data.push_str(line);
                user_data.push('\n');
            }
            user_data.push_str(&format!("  ed25519_public: {}\n", host_key.public_openssh));
        }
        Seed {
            user_data,
            meta_data: format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n"),
        }
    }
}

/// How long the accept loop pauses after a failed accept.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

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
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors (EMFILE/ENFILE) or a connection aborted before
                    // it was accepted: nothing to serve now. Pause instead of spinning a core
                    // on an accept that fails again at once.
                    Err(_) => {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
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
        "user-data" => Some(seed.user_data.to_string()),
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
        let seed = Seed::for_key("kiln-1", "tiny", "root", "ssh-ed25519 AAAA test", None);
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

    #[test]
    fn host_key_goes_into_ssh_keys_and_never_into_debug() {
        let host_key = HostKey {
            private_openssh: Zeroizing::new(
                "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\nBBBB\n-----END OPENSSH PRIVATE KEY-----\n"
                    .into(),
            ),
            public_openssh: "ssh-ed25519 CCCC kiln-host".into(),
        };
        let seed = Seed::for_key(
            "kiln-1",
            "tiny",
            "debian",
            "ssh-ed25519 AAAA kiln",
            Some(&host_key),
        );
        assert_eq!(
            seed.user_data.as_str(),
            "#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 AAAA kiln\n\
             ssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n    \
             -----BEGIN OPENSSH PRIVATE KEY-----\n    AAAA\n    BBBB\n    \
             -----END OPENSSH PRIVATE KEY-----\n  ed25519_public: ssh-ed25519 CCCC kiln-host\n"
        );
        let debug = format!("{seed:?} {host_key:?}");
        assert!(
            !debug.contains("PRIVATE") && !debug.contains("AAAA\n"),
            "{debug}"
        );
    }
}
