//! Writing the host's schema as protobuf, as a proto3 encoder does:
//! `optional` fields when present, other scalars when not zero, strings
//! and bytes when not empty, fields in number order. The output reads back
//! through [`crate::protobuf`] to the same messages.

use crate::wire;
use alloc::vec::Vec;

struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, v: u64) {
        crate::varint::write(&mut self.0, v);
    }

    fn key(&mut self, number: u64, wire_type: u64) {
        self.varint((number << 3) | wire_type);
    }

    fn opt(&mut self, number: u64, v: Option<u64>) {
        if let Some(v) = v {
            self.key(number, 0);
            self.varint(v);
        }
    }

    fn int(&mut self, number: u64, v: u64) {
        if v != 0 {
            self.opt(number, Some(v));
        }
    }

    /// An enum or int32: negative values are sign-extended to 64 bits.
    fn enumeration(&mut self, number: u64, v: i32) {
        self.int(number, i64::from(v) as u64);
    }

    fn bytes(&mut self, number: u64, b: &[u8]) {
        self.key(number, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn text(&mut self, number: u64, s: &str) {
        if !s.is_empty() {
            self.bytes(number, s.as_bytes());
        }
    }

    fn message(&mut self, number: u64, f: impl FnOnce(&mut Msg)) {
        let mut m = Msg(Vec::new());
        f(&mut m);
        self.bytes(number, &m.0);
    }
}

fn device(m: &mut Msg, d: &wire::PhysicalDevice) {
    m.enumeration(1, d.device_type);
    m.text(2, &d.device_path);
    m.int(3, d.sub_device_path.into());
}

fn lun(m: &mut Msg, l: &wire::Lun) {
    m.opt(1, l.channel.map(u64::from));
    m.int(2, l.location.into());
    m.text(3, &l.device_id);
    m.text(4, &l.vendor_id);
    m.text(5, &l.product_id);
    m.text(6, &l.product_revision_level);
    m.text(7, &l.serial_number);
    m.text(8, &l.model_number);
    m.opt(9, l.medium_rotation_rate.map(u64::from));
    m.opt(10, l.physical_sector_size.map(u64::from));
    m.opt(11, l.fua.map(u64::from));
    m.opt(12, l.write_cache.map(u64::from));
    m.opt(13, l.odx.map(u64::from));
    m.opt(14, l.disable_thin_provisioning.map(u64::from));
    m.opt(15, l.max_transfer_length);
    if let Some(pd) = &l.physical_devices {
        m.message(16, |p| {
            p.enumeration(1, pd.r#type);
            if let Some(d) = &pd.device {
                p.message(2, |m| device(m, d));
            }
            for d in &pd.devices {
                p.message(3, |m| device(m, d));
            }
        });
    }
    m.int(17, l.is_dvd.into());
    m.int(18, l.chunk_size_in_kb.into());
    m.opt(19, l.scsi_disk_size_in_bytes);
    if let Some(g) = &l.ntfs_guid {
        m.bytes(20, g.as_bytes());
    }
    m.int(1001, l.total_logic_size_in_kb.into());
    if let Some(t) = l.device_type {
        m.key(1002, 0);
        m.varint(i64::from(t) as u64);
    }
    if let Some(p) = &l.device_path {
        m.bytes(1003, p.as_bytes());
    }
    m.opt(1004, l.sub_device_path.map(u64::from));
}

/// Writes base content as a top-level `Vtl2Settings` message (fields
/// `version` = 2, `fixed` = 3, `dynamic` = 4).
pub fn to_protobuf(base: &wire::Base) -> Vec<u8> {
    let mut m = Msg(Vec::new());
    m.enumeration(2, base.version);
    if let Some(f) = &base.fixed {
        m.message(3, |m| {
            m.opt(1, f.scsi_sub_channels.map(u64::from));
            m.opt(2, f.io_ring_size.map(u64::from));
            m.opt(3, f.max_bounce_buffer_pages.map(u64::from));
        });
    }
    if let Some(d) = &base.dynamic {
        m.message(4, |m| {
            for c in &d.storage_controllers {
                m.message(1, |m| {
                    m.text(1, &c.instance_id);
                    m.enumeration(2, c.protocol);
                    for l in &c.luns {
                        m.message(3, |m| lun(m, l));
                    }
                    m.opt(4, c.io_queue_depth.map(u64::from));
                });
            }
            for n in &d.nic_devices {
                m.message(2, |m| {
                    m.text(1, &n.instance_id);
                    if let Some(s) = &n.subordinate_instance_id {
                        m.bytes(2, s.as_bytes());
                    }
                    m.opt(3, n.max_sub_channels.map(u64::from));
                });
            }
        });
    }
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{json, protobuf};

    #[test]
    fn protobuf_out_round_trips_samples() {
        for data in crate::TEST_SAMPLES {
            let base = json::decode_settings(data).unwrap().take_base();
            let blob = to_protobuf(&base);
            let again = protobuf::decode_settings(&blob).unwrap();
            assert_eq!(again.version, base.version);
            assert_eq!(again.fixed, base.fixed);
            assert_eq!(again.dynamic, base.dynamic);
            assert!(again.namespace_settings.is_empty());
        }
    }

    #[test]
    fn protobuf_out_negative_enum() {
        let base = wire::Base {
            version: -1,
            ..wire::Base::default()
        };
        let blob = to_protobuf(&base);
        assert_eq!(blob.len(), 11);
        assert_eq!(protobuf::decode_settings(&blob).unwrap().version, -1);
    }
}
