//! The processes of the TCP/HTTP section (nginx, HAProxy, iperf3, wrk),
//! their configurations, and the CPU figures read from /proc and BPF.

use std::{
    fs,
    net::Ipv4Addr,
    os::{fd::OwnedFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::{Netns, backend_addr};

pub type Result<T> = std::result::Result<T, String>;

/// A server process in its own process group; on drop the whole group
/// (nginx's workers too) is killed with SIGKILL and the leader reaped.
pub struct Proc {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args` in `ns` (nsenter --net execs it: the pid is the
    /// program's), stdout and stderr to `log`.
    pub fn spawn(ns: &Netns, name: &str, program: &str, args: &[&str], log: &Path) -> Result<Self> {
        let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = ns
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start {name} ({program}): {e}"))?;
        Ok(Self {
            child,
            name: name.into(),
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error (with the log's tail) if it has exited.
    pub fn check(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!(
                "{} exited ({st}); log:\n{}",
                self.name,
                tail(&self.log)
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SIGTERM first, so nginx's master stops and reaps its workers
        // (killed together, they would linger as zombies of init); then
        // SIGKILL for whatever of the group is left.
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(pgid, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < end {
                thread::sleep(Duration::from_millis(10));
            }
        }
        // SAFETY: kill(2) on the process group we created for this child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs a command to completion within `limit` (killed after), stdout and
/// stderr to files next to `out`; its stdout, or an error with stderr.
pub fn run_bounded(cmd: &mut Command, limit: Duration, out: &Path) -> Result<String> {
    let shown = format!("{cmd:?}");
    let err_path = out.with_extension("err");
    let o = fs::File::create(out).map_err(|e| e.to_string())?;
    let e = fs::File::create(&err_path).map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(o)
        .stderr(e)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let end = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(20)),
            _ => {
                // SAFETY: kill(2) on the process group we created.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("{shown}: still running after {limit:?}, killed"));
            }
        }
    };
    let stdout = fs::read_to_string(out).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "{shown}: {status}: {}\n{}",
            tail(&err_path),
            tail(out)
        ));
    }
    Ok(stdout)
}

/// Whether something in `ns` listens on TCP `port`.
pub fn listening(ns: &Netns, port: u16) -> bool {
    ns.command("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
}

/// nginx as a backend web server: `return 200 "backend-<i>\n"` on
/// 0.0.0.0:80 (all addresses, so also the VIP on loopback, for DSR).
pub fn nginx_backend_conf(dir: &Path, i: usize, workers: usize) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 16384;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    default_type text/plain;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
        listen 80 reuseport backlog=4096;
        location / {{ return 200 "backend-{i}\n"; }}
    }}
}}
"#
    )
}

/// HAProxy 2.6, `mode tcp`, `balance source`, `hash-type consistent`.
pub fn haproxy_conf(listen: Ipv4Addr, backends: usize, http_port: u16, iperf_port: u16) -> String {
    let mut s = format!(
        "global\n    maxconn 8000\n    nbthread {}\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
         listen web\n    bind {listen}:{http_port}\n    balance source\n    hash-type consistent\n",
        nproc()
    );
    for i in 0..backends {
        s += &format!(
            "    server b{i} {}:{http_port} check inter 1s\n",
            backend_addr(i)
        );
    }
    s += &format!(
        "\nlisten iperf\n    bind {listen}:{iperf_port}\n    server b0 {}:{iperf_port}\n",
        backend_addr(0)
    );
    s
}

/// nginx's stream module, `hash $remote_addr consistent`.
pub fn nginx_stream_conf(
    dir: &Path,
    listen: Ipv4Addr,
    backends: usize,
    http_port: u16,
    iperf_port: u16,
) -> String {
    let d = dir.display();
    let servers: String = (0..backends)
        .map(|i| format!("        server {}:{http_port};\n", backend_addr(i)))
        .collect();
    format!(
        r#"load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 16384;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8000; }}
stream {{
    upstream web {{
        hash $remote_addr consistent;
{servers}    }}
    upstream iperf {{
        server {b0}:{iperf_port};
    }}
    server {{
        listen {listen}:{http_port} backlog=4096;
        proxy_pass web;
    }}
    server {{
        listen {listen}:{iperf_port};
        proxy_pass iperf;
    }}
}}
"#,
        workers = nproc(),
        b0 = backend_addr(0),
    )
}

pub fn nproc() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get())
}

/// utime + stime (clock ticks) of one process, all its threads.
fn ticks_of(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is field 3, utime 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Direct children of a process.
fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let c = fs::read_to_string(t.path().join("children")).unwrap_or_default();
            v.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    v
}

/// utime + stime (clock ticks) of a process and its live children (nginx's
/// master and workers; HAProxy's threads are in its own figure).
pub fn group_ticks(pid: u32) -> u64 {
    ticks_of(pid).unwrap_or(0)
        + children_of(pid)
            .into_iter()
            .filter_map(ticks_of)
            .sum::<u64>()
}

/// Clock ticks per second.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The machine-wide `cpu` line of /proc/stat: user nice system idle iowait
/// irq softirq steal guest guest_nice (clock ticks).
pub fn cpu_stat() -> [u64; 10] {
    let mut out = [0u64; 10];
    if let Ok(s) = fs::read_to_string("/proc/stat")
        && let Some(line) = s.lines().find(|l| l.starts_with("cpu "))
    {
        for (o, v) in out.iter_mut().zip(line.split_whitespace().skip(1)) {
            *o = v.parse().unwrap_or(0);
        }
    }
    out
}

/// Run-time statistics of a loaded BPF program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// XDP programs (prog_type 6) a process holds an fd of, from
/// /proc/<pid>/fdinfo (which shows run_time_ns and run_cnt while BPF
/// statistics are enabled); looks at its children too.
pub fn xdp_progs(pid: u32) -> Vec<ProgStats> {
    let mut found: Vec<ProgStats> = Vec::new();
    for p in std::iter::once(pid).chain(children_of(pid)) {
        let Ok(fds) = fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_prog = fs::read_link(fd.path())
                .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog");
            if !is_prog {
                continue;
            }
            let info = fs::read_to_string(format!(
                "/proc/{p}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let field = |k: &str| -> Option<u64> {
                info.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                    .and_then(|v| v.trim().parse().ok())
            };
            if field("prog_type") != Some(6) {
                continue;
            }
            let st = ProgStats {
                id: field("prog_id").unwrap_or(0) as u32,
                run_time_ns: field("run_time_ns").unwrap_or(0),
                run_cnt: field("run_cnt").unwrap_or(0),
            };
            if !found.iter().any(|f| f.id == st.id) {
                found.push(st);
            }
        }
    }
    found
}

/// Run statistics of the program with this id, whoever holds it (the
/// rig's peer program is held only by its pinned link).
pub fn prog_by_id(id: u32) -> Option<ProgStats> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .map(|p| ProgStats {
            id,
            run_time_ns: p.run_time().as_nanos() as u64,
            run_cnt: p.run_count(),
        })
}

/// Sum over programs.
pub fn prog_sum(v: &[ProgStats]) -> (u64, u64) {
    v.iter()
        .fold((0, 0), |a, p| (a.0 + p.run_time_ns, a.1 + p.run_cnt))
}

/// BPF run-time statistics on while this lives: BPF_ENABLE_STATS (the fd
/// turns them off again when closed, even if we crash), else the sysctl,
/// restored on drop.
pub enum BpfStats {
    Fd(#[allow(dead_code, reason = "held open: closing it disables the statistics")] OwnedFd),
    Sysctl(String),
    AlreadyOn,
}

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<Self> {
        if fs::read_to_string(SYSCTL).is_ok_and(|v| v.trim() == "1") {
            return Ok(Self::AlreadyOn);
        }
        if let Ok(fd) = aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            return Ok(Self::Fd(fd));
        }
        let old = fs::read_to_string(SYSCTL).map_err(|e| format!("{SYSCTL}: {e}"))?;
        fs::write(SYSCTL, "1").map_err(|e| format!("{SYSCTL}: {e}"))?;
        Ok(Self::Sysctl(old.trim().to_owned()))
    }

    pub fn how(&self) -> &'static str {
        match self {
            Self::Fd(_) => "BPF_ENABLE_STATS fd",
            Self::Sysctl(_) => "sysctl kernel.bpf_stats_enabled=1 (restored after)",
            Self::AlreadyOn => "kernel.bpf_stats_enabled was already 1",
        }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Self::Sysctl(old) = self {
            let _ = fs::write(SYSCTL, old.as_bytes());
        }
    }
}

/// Parses a wrk duration ("635.91us", "1.23ms", "2.00s") into milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (num, mul) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * mul)
}

/// What `wrk --latency` printed.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub req_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors and non-2xx answers.
    pub errors: u64,
}

pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult {
        req_s: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
    };
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.req_s = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_ms = wrk_ms(v.trim()).unwrap_or(f64::NAN);
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_ms = wrk_ms(v.trim()).unwrap_or(f64::NAN);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            r.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    if r.req_s.is_nan() {
        return Err(format!("no Requests/sec in wrk's output:\n{out}"));
    }
    Ok(r)
}

/// Received bits per second from `iperf3 -J`.
pub fn parse_iperf(out: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(out).map_err(|e| {
        format!(
            "iperf3 JSON: {e}: {}",
            out.chars().take(300).collect::<String>()
        )
    })?;
    if let Some(e) = v.get("error") {
        return Err(format!("iperf3: {e}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| "iperf3: no end.sum_received.bits_per_second".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output() {
        let out = "Running 1s test @ http://10.77.0.10/\n  2 threads and 64 connections\n  Latency Distribution\n     50%  635.91us\n     75%    1.00ms\n     90%    1.50ms\n     99%    2.10ms\n  1000 requests in 1.00s, 1.0MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 4\nRequests/sec:  12345.67\nTransfer/sec:      1.50MB\n";
        let r = parse_wrk(out).unwrap();
        assert!((r.req_s - 12345.67).abs() < 1e-6);
        assert!((r.p50_ms - 0.63591).abs() < 1e-9);
        assert!((r.p99_ms - 2.1).abs() < 1e-9);
        assert_eq!(r.errors, 10);
    }
}
