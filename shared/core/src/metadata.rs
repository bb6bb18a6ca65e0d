//! The per-machine secret in the metadata service's URL.
//!
//! The installed OS's cloud-init finds its datasource at
//! `<metadata_url>/<machine id>/<secret>/` (NoCloud's `seedfrom`), which apid renders into the
//! template when it creates the workflow, and ipxed checks on every request. The secret is an
//! HMAC of the machine and the workflow under the boot-token key, which apid and ipxed both
//! hold: nothing to store, and a new install (a new workflow) gets a new secret, so a URL
//! copied out of an old install stops working. Without it, the metadata service can only
//! tell machines apart by their source address, which any host on the same L2 segment can
//! take (docs/security.md).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::MachineId;

/// Hex digits of the secret (128 bits).
pub const SECRET_LEN: usize = 32;

fn tag(key: &[u8], machine: MachineId, workflow: Uuid) -> [u8; 32] {
    // An HMAC key of any length is accepted.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(b"dragonfly metadata v1\0");
    m.update(machine.0.as_bytes());
    m.update(workflow.as_bytes());
    m.finalize().into_bytes().into()
}

/// The secret of `machine`'s install by `workflow`: 32 lowercase hex digits.
pub fn secret(key: &[u8], machine: MachineId, workflow: Uuid) -> String {
    let t = tag(key, machine, workflow);
    let mut s = String::with_capacity(SECRET_LEN);
    for b in &t[..SECRET_LEN / 2] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Whether `given` is the secret of `machine`'s install by `workflow` (constant time).
pub fn verify(key: &[u8], machine: MachineId, workflow: Uuid, given: &str) -> bool {
    let want = secret(key, machine, workflow);
    given.len() == SECRET_LEN && bool::from(want.as_bytes().ct_eq(given.as_bytes()))
}

/// The datasource URL of an install: `base` (ipxed's `…/metadata`, no trailing slash needed)
/// joined with the machine and its secret, ending in `/` as NoCloud's `seedfrom` wants.
pub fn datasource_url(base: &str, key: &[u8], machine: MachineId, workflow: Uuid) -> String {
    format!(
        "{}/{}/{}/",
        base.trim_end_matches('/'),
        machine,
        secret(key, machine, workflow)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_differ_per_machine_workflow_and_key_and_verify() {
        let m = MachineId(Uuid::from_u128(1));
        let w = Uuid::from_u128(2);
        let s = secret(b"key", m, w);
        assert_eq!(s.len(), SECRET_LEN);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(verify(b"key", m, w, &s));
        assert!(!verify(b"key", MachineId(Uuid::from_u128(3)), w, &s));
        assert!(!verify(b"key", m, Uuid::from_u128(4), &s));
        assert!(!verify(b"other", m, w, &s));
        assert!(!verify(b"key", m, w, &s[..31]));
        assert!(!verify(b"key", m, w, ""));
        assert_eq!(
            datasource_url("http://10.0.0.1:8080/metadata/", b"key", m, w),
            format!("http://10.0.0.1:8080/metadata/{m}/{s}/")
        );
    }
}
