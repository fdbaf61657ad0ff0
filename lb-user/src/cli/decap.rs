//! `stickylb decap ...`: runs the decap module's commands and prints what
//! they found, in words or (--json) as JSON.

use std::io::Write;

use super::{Failed, args::DecapAction};
use crate::decap::{
    self, AttachOptions, InterfaceStatus,
    check::{self, Facts, Level},
};

pub(super) fn run(action: &DecapAction, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    match action {
        DecapAction::Attach {
            interface,
            allow,
            address,
            gue_port,
            no_gue,
            no_ipip,
            xdp_mode,
            pin_dir,
        } => {
            let opts = AttachOptions {
                interface: interface.clone(),
                allow: allow.clone(),
                address: *address,
                gue_port: (!no_gue).then_some(*gue_port),
                ipip: !no_ipip,
                mode: *xdp_mode,
                pin_dir: pin_dir.clone(),
            };
            let report = decap::attach(&opts)?;
            // Under --json the warnings are in the report: stderr stays empty.
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
                return Ok(());
            }
            for w in &report.warnings {
                super::to_stderr(&format!("warning: {w}"));
            }
            let st = &report.status;
            writeln!(
                out,
                "{} the decap program on {interface} ({} mode, link {}); pinned under {}",
                if report.updated {
                    "updated in place"
                } else {
                    "attached"
                },
                st.mode.unwrap_or("?"),
                st.link_id.map_or_else(|| "?".into(), |id| id.to_string()),
                st.pin_dir.display()
            )?;
            print_settings(out, st)
        }
        DecapAction::Status { interface, pin_dir } => {
            let names = match interface {
                Some(i) => vec![i.clone()],
                None => decap::pinned_interfaces(pin_dir)?,
            };
            let all: Vec<InterfaceStatus> = names
                .iter()
                .map(|i| decap::status_of(pin_dir, i))
                .collect::<anyhow::Result<_>>()?;
            if json {
                let v = serde_json::json!({ "pin_dir": pin_dir, "interfaces": all });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                return Ok(());
            }
            if all.is_empty() {
                writeln!(
                    out,
                    "not attached anywhere: nothing pinned under {}",
                    pin_dir.display()
                )?;
            }
            for st in &all {
                print_status(out, st)?;
            }
            Ok(())
        }
        DecapAction::Detach { interface, pin_dir } => {
            let report = decap::detach(pin_dir, interface)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
                return Ok(());
            }
            match (report.detached, report.removed.is_empty()) {
                (false, true) => writeln!(
                    out,
                    "not attached to {interface}: nothing pinned under {}",
                    pin_dir.join(interface).display()
                )?,
                (detached, _) => {
                    writeln!(
                        out,
                        "{} {interface}; removed {} pins under {}",
                        if detached {
                            "detached the decap program from"
                        } else {
                            "nothing was running on"
                        },
                        report.removed.len(),
                        pin_dir.join(interface).display()
                    )?;
                }
            }
            Ok(())
        }
        DecapAction::Check {
            interface,
            vip,
            pin_dir,
        } => {
            let status = crate::netdev::ifindex(interface)
                .map(|_| decap::status_of(pin_dir, interface))
                .transpose()?;
            let addresses = crate::netdev::addresses().ipv4;
            let findings = check::judge(&Facts {
                interface,
                vips: vip,
                addresses: &addresses,
                sysctl: &check::read_sysctl,
                decap: status.as_ref(),
            });
            let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
            if json {
                let v = serde_json::json!({
                    "interface": interface,
                    "ok": failed == 0,
                    "findings": findings,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                if status.is_none() {
                    writeln!(out, "no interface named {interface} here")?;
                }
                for f in &findings {
                    let tag = match f.level {
                        Level::Ok => "ok  ",
                        Level::Warn => "warn",
                        Level::Fail => "FAIL",
                    };
                    writeln!(out, "{tag}  {}: {}", f.check, f.detail)?;
                    if let Some(fix) = &f.fix {
                        writeln!(out, "      fix: {fix}")?;
                    }
                }
                writeln!(
                    out,
                    "{}",
                    match failed {
                        0 => "backend ready for tunnelled traffic".to_owned(),
                        1 => "1 check failed".to_owned(),
                        n => format!("{n} checks failed"),
                    }
                )?;
            }
            if failed > 0 {
                return Err(Failed.into());
            }
            Ok(())
        }
    }
}

fn print_status(out: &mut dyn Write, st: &InterfaceStatus) -> anyhow::Result<()> {
    if st.attached {
        writeln!(
            out,
            "{}: attached in {} mode (link {}, program {}), pinned under {}",
            st.interface,
            st.mode.unwrap_or("?"),
            st.link_id.unwrap_or(0),
            st.program_id.unwrap_or(0),
            st.pin_dir.display()
        )?;
    } else {
        writeln!(
            out,
            "{}: not attached{}",
            st.interface,
            st.problem
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        )?;
    }
    print_settings(out, st)
}

fn print_settings(out: &mut dyn Write, st: &InterfaceStatus) -> anyhow::Result<()> {
    let Some(s) = &st.settings else {
        return Ok(());
    };
    let mut modes = Vec::new();
    if s.ipip {
        modes.push("ip-in-ip".to_owned());
    }
    if let Some(p) = s.gue_port {
        modes.push(format!("gue on UDP port {p}"));
    }
    writeln!(
        out,
        "  accepts:  {} to {}",
        if modes.is_empty() {
            "nothing".to_owned()
        } else {
            modes.join(", ")
        },
        s.address
    )?;
    let sources: Vec<String> = s.sources.iter().map(ToString::to_string).collect();
    writeln!(
        out,
        "  from:     {}",
        if sources.is_empty() {
            "no source (every tunnel frame is dropped)".to_owned()
        } else {
            sources.join(", ")
        }
    )?;
    if !st.counters.is_empty() {
        let c: Vec<String> = st
            .counters
            .iter()
            .map(|(name, v)| format!("{name} {v}"))
            .collect();
        writeln!(out, "  counters: {}", c.join(", "))?;
    }
    Ok(())
}
