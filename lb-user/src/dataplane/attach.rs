//! Attaching the program to an interface: directly, for as long as the
//! daemon lives, or through a pinned link that outlives it and that the
//! next daemon adopts.

use std::path::Path;

use aya::programs::{
    XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    xdp::{XdpLink, XdpLinkId},
};

use super::{AttachMode, Attached, Dataplane, DataplaneError, Result, sys};

impl Dataplane {
    /// Attaches to `iface`. The attachment lasts as long as `self`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpLinkId> {
        let flags = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        self.program()
            .attach(iface, flags)
            .map_err(|source| DataplaneError::Attach {
                iface: iface.to_owned(),
                mode: mode.name(),
                hint: match mode {
                    AttachMode::Driver => "; retry in skb (generic) mode",
                    AttachMode::Skb => "",
                },
                source: Box::new(source),
            })
    }

    /// Attaches through a link pinned at `link_pin`, so the program keeps
    /// forwarding when the daemon exits or dies. If a link is already pinned
    /// there (a previous daemon's), this program replaces the old one in it
    /// atomically. `fallback`: mode to try when `mode` is refused.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        fallback: Option<AttachMode>,
        link_pin: &Path,
    ) -> Result<(Attached, Vec<DataplaneError>)> {
        if link_pin.exists() {
            let pinned_err = |e: LinkError| DataplaneError::PinnedLink {
                path: link_pin.to_owned(),
                source: Box::new(e),
            };
            let pinned = PinnedLink::from_pin(link_pin).map_err(pinned_err)?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(pinned_err)?;
            let prog = self.program();
            let id = prog
                .attach_to_link(link)
                .map_err(|e| DataplaneError::Program(Box::new(e)))?;
            // The pin keeps the link; our handle on it may go.
            drop(prog.take_link(id));
            return Ok((Attached::Adopted, Vec::new()));
        }
        let mut refused = Vec::new();
        let (id, used) = match self.attach(iface, mode) {
            Ok(id) => (id, mode),
            Err(e) => match fallback {
                Some(other) => {
                    refused.push(e);
                    (self.attach(iface, other)?, other)
                }
                None => return Err(e),
            },
        };
        let prog = self.program();
        let link = prog
            .take_link(id)
            .map_err(|e| DataplaneError::Program(Box::new(e)))?;
        let pin_err = |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::PinLink {
            path: link_pin.to_owned(),
            source: e,
        };
        let fd_link = FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?;
        fd_link.pin(link_pin).map_err(|e| pin_err(Box::new(e)))?;
        Ok((Attached::New(used), refused))
    }

    /// Detaches the program pinned at `link_pin` (if any) by removing the
    /// pin and closing the last handle on the link.
    pub fn detach_pinned(link_pin: &Path) -> Result<bool> {
        if !link_pin.exists() {
            return Ok(false);
        }
        let pinned = PinnedLink::from_pin(link_pin).map_err(|e| DataplaneError::PinnedLink {
            path: link_pin.to_owned(),
            source: Box::new(e),
        })?;
        let fd_link = pinned.unpin().map_err(|e| DataplaneError::PinLink {
            path: link_pin.to_owned(),
            source: Box::new(e),
        })?;
        drop(fd_link);
        Ok(true)
    }

    /// What to tell the operator when frames the program sends back out of
    /// `iface` will be dropped: on a veth in driver mode, XDP_TX hands them
    /// to the peer's XDP receive path, which drops them unless the peer has
    /// an XDP program of its own. `None` when nothing is wrong (or the
    /// kernel cannot tell).
    pub fn xdp_tx_warning(iface: &str) -> Option<String> {
        let index = crate::netdev::ifindex(iface)?;
        match super::veth::veth_peer_without_xdp(index) {
            Ok(Some(peer)) => Some(format!(
                "{iface} is a veth running XDP in driver mode, and its peer {peer} has no XDP \
                 program: every frame the program forwards (XDP_TX) is dropped by the kernel. \
                 Set xdp_mode = \"skb\" and restart, or attach an XDP program to the peer in \
                 driver mode (one that returns XDP_PASS is enough)"
            )),
            Ok(None) => None,
            Err(e) => {
                log::debug!("cannot tell whether {iface} is a veth with an XDP peer: {e}");
                None
            }
        }
    }

    /// The interface index the XDP link pinned at `link_pin` is attached to;
    /// 0 when its interface is gone (the link is then defunct).
    pub fn pinned_link_ifindex(link_pin: &Path) -> std::io::Result<u32> {
        Self::pinned_link_info(link_pin).map(|(_, ifindex)| ifindex)
    }

    /// The id of the program the XDP link pinned at `link_pin` runs, and
    /// the interface index it is attached to.
    pub fn pinned_link_info(link_pin: &Path) -> std::io::Result<(u32, u32)> {
        sys::pinned_xdp_link(link_pin)
    }
}
