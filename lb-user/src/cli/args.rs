//! The command line's arguments, and the control request each daemon
//! command sends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{
    api::Request,
    decap::{DEFAULT_PIN_DIR as DECAP_PIN_DIR, Source, XdpModeChoice},
};

#[derive(Parser)]
#[command(
    name = "stickylb",
    version,
    about = "Sticky L4 load balancer: an XDP program pins every client IP to one backend",
    long_about = "Sticky L4 load balancer. An XDP program pins every client, by IP address, to one \
backend (an affinity table backed by a Maglev table) and forwards by L2 direct server return. \
`stickylb run` loads it and keeps it in step with the config and the backends' health; the \
other commands talk to the running daemon over its control socket.",
    after_long_help = "Environment:\n  STICKYLB_CONFIG, STICKYLB_SOCKET: as -c and --socket.\n  \
RUST_LOG: what `stickylb run` logs (default: info); see `stickylb run --help`.\n\n\
Man pages: `stickylb man COMMAND... | man -l -`, `stickylb man stickylb.toml` for the config \
file's, or `stickylb man --dir DIR` for all (DIR/man1, DIR/man5)."
)]
pub struct Cli {
    /// Control socket of the daemon to talk to. Default: that of the running
    /// daemon started with -c FILE (whatever FILE says now), else FILE's
    /// `control_socket`; without -c, the only running daemon's, else
    /// /run/stickylb/stickylb.sock.
    #[arg(long, global = true, env = "STICKYLB_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Config file (for `run`, `check`; other commands read its control_socket).
    #[arg(short, long, global = true, env = "STICKYLB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of tables; errors too, as {"ok": false, "error": ...}.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// How the daemon logs and how to choose what: in `run --help` and its
/// man page.
const LOGGING_HELP: &str = "\
Logging:
  The daemon logs to stderr, one line per event: the time (UTC, to the millisecond),
  the level, the module and the message, e.g.
    [2026-01-31T12:00:00.123Z INFO  lb_user::lb] web: backend 10.0.0.11:80 up: ...

  RUST_LOG chooses what is logged (default: info). Levels, from fewest lines to most:
  error, warn, info, debug, trace. A level can be set per module, after a comma:
    RUST_LOG=warn                        problems only
    RUST_LOG=warn,lb_user::lb=info       problems, and backends going up and down
    RUST_LOG=debug,aya=info              all of stickylb's detail, less of the BPF library's
  Modules: lb_user::daemon (start, reload, signals, warnings about the config),
  lb_user::lb (backends up and down, live changes, what a reload applied),
  lb_user::dataplane (loading, attaching), lb_user::announce (VIPs announced and
  withdrawn), lb_user::control and lb_user::metrics (their sockets), aya (the BPF
  library).";

#[derive(Subcommand)]
pub enum Command {
    /// Load and attach the program and run the daemon until SIGINT/SIGTERM,
    /// which leave the program forwarding with its state pinned. State
    /// pinned by an earlier run is adopted: no client moves. One daemon per
    /// pin_path: a second one is refused.
    #[command(after_long_help = LOGGING_HELP)]
    Run {
        /// Replace pinned state from an earlier run instead of adopting it
        /// (clears every affinity entry and counter).
        #[arg(long)]
        fresh: bool,
        /// No effect, kept so that scripts still run: leaving the program
        /// forwarding on exit is the default (`stickylb unload` takes it down).
        #[arg(long, hide = true)]
        keep: bool,
    },
    /// Stop the running daemon. The XDP program keeps forwarding and the
    /// state stays pinned: a new `stickylb run` adopts it and no client
    /// moves (SIGTERM does the same).
    Stop,
    /// Take the data path down: stop the daemon if one runs, detach the XDP
    /// program, unpin the maps, remove the control socket. Every VIP's
    /// clients lose service. Also cleans up after a daemon that is gone.
    Unload {
        /// The pin folder to unload when no daemon answers. Default: the
        /// config's pin_path when -c is given, else /sys/fs/bpf/stickylb.
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
    /// Validate the config without touching the kernel; lists every problem.
    Check,
    #[command(flatten)]
    Query(Query),
    /// On a backend: attach, inspect, check and detach the decapsulation
    /// program that the tunnel modes (forwarding = "ipip" or "gue") need.
    /// No daemon: the program keeps working after the command exits.
    #[command(after_long_help = DECAP_HELP)]
    Decap {
        #[command(subcommand)]
        action: DecapAction,
    },
    /// Print shell completions.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff), or write every page with --dir: stickylb(1),
    /// a page per command (stickylb-run(1), ...) and the config file's,
    /// stickylb.toml(5).
    #[command(
        after_help = "Examples:\n  stickylb man | man -l -\n  stickylb man backend add | man -l -\n  \
                      stickylb man stickylb.toml | man -l -\n  \
                      stickylb man --dir /usr/local/share/man    # then: man stickylb-run"
    )]
    Man {
        /// Write every page under this man tree, in the folder of its
        /// section, as man(1) looks for them: DIR/man1/stickylb.1,
        /// DIR/man1/stickylb-run.1, ..., DIR/man5/stickylb.toml.5 (the
        /// folders are created). DIR is what MANPATH or `man -M` takes, e.g.
        /// /usr/local/share/man.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        dir: Option<PathBuf>,
        /// The page to print: a command, e.g. `backend add`, or
        /// `stickylb.toml` for the config file's; default: stickylb's.
        command: Vec<String>,
    },
}

/// What `decap --help` says about the whole of it.
const DECAP_HELP: &str = "\
A load balancer forwarding a VIP with forwarding = \"ipip\" or \"gue\" sends each client
packet to the backend's own address inside an outer IPv4 header (GUE: and a UDP header to
port 6080). The backend needs no ipip/fou kernel module: it runs stickylb's own XDP
program, which strips the outer header of frames from the load balancers (--allow) to this
host's address (--address) and hands the client's packet to the stack, where the VIP sits
on lo as in DSR. Other tunnel frames are dropped and counted; all other traffic passes
untouched.

Typical backend setup:
  stickylb decap attach --interface eth0 --allow 10.0.0.1 --allow 10.0.0.2
  ip addr add VIP/32 dev lo
  sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
  stickylb decap check --interface eth0 --vip VIP

Pins: <pin dir>/<interface>/{link,SLB_DECAP_CFG,SLB_DECAP_SRC,SLB_DECAP_STATS}
(default pin dir /sys/fs/bpf/stickylb-decap). See docs/tunnels.md.";

/// `stickylb decap`'s commands.
#[derive(Subcommand)]
pub enum DecapAction {
    /// Attach the decap program to an interface, or, when it is attached
    /// already, rewrite what it accepts in place (no frame is missed).
    /// Refused when another XDP program is attached.
    #[command(
        after_help = "Examples:\n  stickylb decap attach --interface eth0 --allow 10.0.0.1\n  \
                      stickylb decap attach -i eth0 --allow 10.0.9.0/24 --no-gue\n  \
                      stickylb decap attach -i eth0 --allow 10.0.0.1 --address 10.0.5.7 \
                      --gue-port 7000"
    )]
    Attach {
        /// The interface the tunnelled frames arrive on.
        #[arg(short, long, value_name = "IF")]
        interface: String,
        /// A load balancer's outer source: an address (e.g. its [tunnel]
        /// source) or a prefix (its source_prefix). Repeat for each; at
        /// least one. Tunnel frames from anything else are dropped.
        #[arg(long, value_name = "ADDR[/LEN]", required = true)]
        allow: Vec<Source>,
        /// The only outer destination accepted: the backend address the load
        /// balancers' config names. Default: the interface's primary IPv4.
        #[arg(long, value_name = "ADDR")]
        address: Option<Ipv4Addr>,
        /// UDP port of GUE (the load balancers' [tunnel] gue_port).
        #[arg(long, value_name = "N", default_value_t = lb_common::DEFAULT_GUE_PORT)]
        gue_port: u16,
        /// Do not decapsulate GUE: UDP to the GUE port is ordinary traffic.
        #[arg(long, conflicts_with = "gue_port")]
        no_gue: bool,
        /// Do not decapsulate IP-in-IP: protocol 4 is ordinary traffic
        /// (which a kernel without the ipip module drops).
        #[arg(long)]
        no_ipip: bool,
        /// XDP mode: driver (native), skb (generic), or auto (driver, else
        /// skb with a warning). Ignored when updating in place.
        #[arg(long, value_name = "MODE", default_value = "auto")]
        xdp_mode: XdpModeChoice,
        /// Folder on bpffs; the pins go in <DIR>/<IF>/.
        #[arg(long, value_name = "DIR", default_value = DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Whether the program is attached, in which mode, what it accepts, and
    /// its counters (summed over CPUs).
    Status {
        /// Only this interface; default: every interface pinned under DIR.
        #[arg(short, long, value_name = "IF")]
        interface: Option<String>,
        /// Folder on bpffs the pins are in.
        #[arg(long, value_name = "DIR", default_value = DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach the program and remove every pin `attach` made. Nothing
    /// attached is no error. Tunnelled clients lose service.
    Detach {
        /// The interface to detach from.
        #[arg(short, long, value_name = "IF")]
        interface: String,
        /// Folder on bpffs the pins are in.
        #[arg(long, value_name = "DIR", default_value = DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Check the backend's prerequisites: the decap program attached with
    /// sources, each VIP on lo, ARP settings that keep the VIP to itself,
    /// rp_filter. Each problem with the command that fixes it; the exit
    /// status is 1 when one fails.
    Check {
        /// The interface the tunnelled frames arrive on.
        #[arg(short, long, value_name = "IF")]
        interface: String,
        /// A VIP this backend serves. Repeat for each; at least one.
        #[arg(long, value_name = "ADDR", required = true)]
        vip: Vec<Ipv4Addr>,
        /// Folder on bpffs the pins are in.
        #[arg(long, value_name = "DIR", default_value = DECAP_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// The commands answered by the running daemon.
#[derive(Subcommand)]
pub enum Query {
    /// VIPs and backends: state, weight, MAC, check, clients, traffic.
    Status,
    /// Backends of every VIP, one line each.
    Backends,
    /// Which backend a client goes to, and why.
    Lookup {
        /// The client's IP address.
        client: IpAddr,
        /// Only this VIP (by name); default: every VIP.
        #[arg(long)]
        vip: Option<String>,
    },
    /// Affinity entries (client → backend), the first ones by VIP and
    /// client; the reply says how many matched in all.
    Flows {
        /// Only this VIP (by name).
        #[arg(long)]
        vip: Option<String>,
        /// Only clients of this backend (ADDRESS:PORT).
        #[arg(long)]
        backend: Option<SocketAddr>,
        /// List at most N entries (at most 100000); 0: only count them.
        #[arg(long, value_name = "N", default_value_t = crate::api::DEFAULT_FLOWS_LIMIT)]
        limit: usize,
    },
    /// Change backends live. Not written to the config file: a reload
    /// returns to what the file says.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Re-read the config file and apply the difference (as SIGHUP does).
    Reload,
    /// Maintenance mode: `on` withdraws every VIP's route (`[announce]`) so
    /// the routers send this node nothing new, while whatever still
    /// arrives is forwarded as before; `off` announces them again. Kept
    /// across daemon restarts until turned off.
    Maintenance {
        /// on or off.
        state: OnOff,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
pub enum BackendAction {
    /// Add a backend; it takes clients once its health check passes.
    Add {
        /// The VIP (by name) to add it to.
        #[arg(long)]
        vip: String,
        /// The backend's ADDRESS:PORT.
        backend: SocketAddr,
        /// Its share of new clients, relative to the other backends'.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// MAC address; default: from the kernel's neighbour table.
        #[arg(long)]
        mac: Option<String>,
    },
    /// Remove a backend; its clients are re-picked on their next packet.
    Remove {
        /// The VIP (by name) it belongs to.
        #[arg(long)]
        vip: String,
        /// The backend's ADDRESS:PORT.
        backend: SocketAddr,
    },
    /// Set a backend's weight (0: no new clients).
    Weight {
        /// The VIP (by name) it belongs to.
        #[arg(long)]
        vip: String,
        /// The backend's ADDRESS:PORT.
        backend: SocketAddr,
        /// The new weight.
        weight: u32,
    },
    /// No new clients for this backend; pinned clients stay until their
    /// entry expires or the backend fails.
    Drain {
        /// The VIP (by name) it belongs to.
        #[arg(long)]
        vip: String,
        /// The backend's ADDRESS:PORT.
        backend: SocketAddr,
    },
    /// Undo `drain`.
    Undrain {
        /// The VIP (by name) it belongs to.
        #[arg(long)]
        vip: String,
        /// The backend's ADDRESS:PORT.
        backend: SocketAddr,
    },
}

impl Query {
    /// What to ask the daemon.
    pub fn request(&self) -> Request {
        match self {
            Self::Status | Self::Backends => Request::Status,
            Self::Lookup { client, vip } => Request::Lookup {
                client: *client,
                vip: vip.clone(),
            },
            Self::Flows {
                vip,
                backend,
                limit,
            } => Request::Flows {
                vip: vip.clone(),
                backend: *backend,
                limit: Some(*limit),
            },
            Self::Reload => Request::Reload,
            Self::Maintenance { state } => Request::Maintenance {
                on: *state == OnOff::On,
            },
            Self::Backend { action } => action.request(),
        }
    }
}

impl BackendAction {
    fn request(&self) -> Request {
        match self {
            Self::Add {
                vip,
                backend,
                weight,
                mac,
            } => Request::BackendAdd {
                vip: vip.clone(),
                backend: *backend,
                weight: *weight,
                mac: mac.clone(),
            },
            Self::Remove { vip, backend } => Request::BackendRemove {
                vip: vip.clone(),
                backend: *backend,
            },
            Self::Weight {
                vip,
                backend,
                weight,
            } => Request::BackendWeight {
                vip: vip.clone(),
                backend: *backend,
                weight: *weight,
            },
            Self::Drain { vip, backend } => Request::BackendDrain {
                vip: vip.clone(),
                backend: *backend,
                drained: true,
            },
            Self::Undrain { vip, backend } => Request::BackendDrain {
                vip: vip.clone(),
                backend: *backend,
                drained: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for a in cmd.get_arguments() {
                // clap's own --help/--version carry their help already.
                if a.get_help().is_none() && !matches!(a.get_id().as_str(), "help" | "version") {
                    missing.push(format!("{path} <{}>", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        let mut cmd = Cli::command();
        cmd.build();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn decap_attach_needs_a_source_and_one_gue_choice() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["stickylb", "decap", "attach", "-i", "eth0"]
                    .iter()
                    .chain(args),
            )
        };
        assert!(parse(&[]).is_err(), "no --allow");
        assert!(parse(&["--allow", "10.0.0.1", "--gue-port", "7000", "--no-gue"]).is_err());
        assert!(parse(&["--allow", "10.0.0.5/24"]).is_err(), "host bits");
        let cli = parse(&["--allow", "10.0.0.1", "--allow", "10.9.0.0/24", "--no-gue"]).unwrap();
        let Command::Decap {
            action:
                DecapAction::Attach {
                    allow,
                    no_gue,
                    gue_port,
                    xdp_mode,
                    pin_dir,
                    ..
                },
        } = cli.command
        else {
            panic!("not decap attach");
        };
        assert_eq!(allow.len(), 2);
        assert!(no_gue);
        assert_eq!(gue_port, lb_common::DEFAULT_GUE_PORT);
        assert_eq!(xdp_mode, XdpModeChoice::Auto);
        assert_eq!(pin_dir, PathBuf::from("/sys/fs/bpf/stickylb-decap"));
    }

    #[test]
    fn commands_build_their_requests() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("stickylb").chain(args.iter().copied()))
                .unwrap();
            match cli.command {
                Command::Query(q) => q.request(),
                _ => panic!("{args:?} is not a daemon command"),
            }
        };
        assert_eq!(parse(&["backends"]), Request::Status);
        assert_eq!(
            parse(&["lookup", "2001:db8::1", "--vip", "web"]),
            Request::Lookup {
                client: "2001:db8::1".parse().unwrap(),
                vip: Some("web".into()),
            }
        );
        assert_eq!(
            parse(&["backend", "undrain", "--vip", "web", "10.0.0.2:80"]),
            Request::BackendDrain {
                vip: "web".into(),
                backend: "10.0.0.2:80".parse().unwrap(),
                drained: false,
            }
        );
        assert_eq!(
            parse(&["backend", "add", "--vip", "web", "[2001:db8::2]:80"]),
            Request::BackendAdd {
                vip: "web".into(),
                backend: "[2001:db8::2]:80".parse().unwrap(),
                weight: 1,
                mac: None,
            }
        );
    }
}
