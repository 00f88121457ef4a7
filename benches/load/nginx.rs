//! What an ops team would run instead of mpapi: nginx in front of the same upstream, once as a
//! plain reverse proxy and once with `auth_request`, the usual way to put authentication in
//! front of backends with nginx; and a third time doing mpapi's header work without the auth
//! subrequest, which shows what that work costs nginx over its own floor (proxying alone), as
//! the cached-token row's ratio shows what it costs mpapi over a bare Pingora.
//!
//! The auth subrequest is answered by an nginx location (`return 200`): the floor of that
//! design, since a real deployment sends it to an auth service over HTTP. The authenticated
//! location then does what mpapi does to a request: drops `User-Token`, sets the five identity
//! headers (the values mpapi renders for a full-profile user), sets `X-Forwarded-For`,
//! `X-Real-IP`, `X-Forwarded-Proto` and an `X-Request-Id` (the client's, or a random one, which
//! the answer carries too), and rewrites `/app/` to `/api/`.
//! One process (`master_process off`), as the proxies under test run one worker thread; no
//! access log, like them; connections kept open indefinitely on both sides, like Pingora's. Started from a config generated in a temp dir, stopped at the end.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx with its two servers.
pub struct Nginx {
    /// `proxy_pass` only.
    pub proxy: SocketAddr,
    /// `auth_request`, identity headers and path rewrite, then `proxy_pass`.
    pub auth_request: SocketAddr,
    /// The same headers and rewrite with no `auth_request`.
    pub headers_only: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Start one in front of `upstream`, injecting `identity` (header name, value) pairs.
    pub fn start(upstream: SocketAddr, identity: &[(&str, String)]) -> std::io::Result<Self> {
        Self::start_wrapped(upstream, identity, &[])
    }

    /// [`Nginx::start`] with nginx run by `wrapper` (a command and its arguments, nginx's own
    /// command line appended), e.g. under valgrind; an empty wrapper runs nginx itself.
    pub fn start_wrapped(
        upstream: SocketAddr,
        identity: &[(&str, String)],
        wrapper: &[String],
    ) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("mpapi_bench_nginx_{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tmp"))?;
        let proxy = free_port()?;
        let auth_request = free_port()?;
        let headers_only = free_port()?;
        let servers = Servers {
            proxy,
            auth_request,
            headers_only,
        };
        let config = config(&dir, upstream, &servers, identity);
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, config)?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg("nginx");
                command
            }
            None => Command::new("nginx"),
        };
        let child = command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut nginx = Self {
            proxy,
            auth_request,
            headers_only,
            child,
            dir,
        };
        // Under valgrind nginx takes seconds to start.
        let patience = if wrapper.is_empty() { 5 } else { 120 };
        let deadline = Instant::now() + Duration::from_secs(patience);
        while [proxy, auth_request, headers_only]
            .iter()
            .any(|addr| TcpStream::connect(addr).is_err())
        {
            if Instant::now() > deadline || nginx.child.try_wait()?.is_some() {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                nginx.stop();
                return Err(std::io::Error::other(format!("nginx did not start: {log}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// The nginx process (its only one), whose CPU time the rows charge.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop it and remove its directory.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Ask it to exit (`SIGTERM`), so that a wrapper sees it end normally (callgrind writes its
    /// counts then), wait for that, and remove its directory.
    pub fn stop_gracefully(mut self) {
        let terminated = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|status| status.success());
        if !terminated {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The addresses of the three servers.
struct Servers {
    proxy: SocketAddr,
    auth_request: SocketAddr,
    headers_only: SocketAddr,
}

fn config(
    dir: &std::path::Path,
    upstream: SocketAddr,
    servers: &Servers,
    identity: &[(&str, String)],
) -> String {
    let dir = dir.display();
    let Servers {
        proxy,
        auth_request,
        headers_only,
    } = servers;
    let identity: String = identity
        .iter()
        .map(|(name, value)| format!("            proxy_set_header {name} '{value}';\n"))
        .collect();
    // What mpapi does to a proxied request, in both servers that do it.
    let headers = format!(
        r#"            proxy_pass http://backend/api/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header User-Token "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $mpapi_request_id;
            add_header X-Request-Id $mpapi_request_id always;
{identity}"#
    );
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    # Keep connections open as the proxies under test do (nginx closes them after 1,000
    # requests by default, which the generator would count as failures).
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    # The request's id: the client's, or one nginx makes up (16 random bytes in hex, as mpapi).
    map $http_x_request_id $mpapi_request_id {{
        "" $request_id;
        default $http_x_request_id;
    }}
    upstream backend {{
        server {upstream};
        keepalive 1024;
        keepalive_requests 10000000;
    }}
    server {{
        listen {proxy};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen {auth_request};
        location = /auth {{
            internal;
            return 200;
        }}
        location /app/ {{
            auth_request /auth;
{headers}        }}
    }}
    server {{
        listen {headers_only};
        location /app/ {{
{headers}        }}
    }}
}}
"#
    )
}

/// A port nothing listens on now (bound and released; nginx binds it a moment later).
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}
