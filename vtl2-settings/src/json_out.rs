//! Writing the host's schema as JSON, in the form OpenHCL's own settings
//! files use: snake_case names, enum names, 64-bit integers as decimal
//! strings (proto3 JSON), `bytes` as padded standard base64. Absent
//! optional fields and proto3 scalars at their zero value are omitted, as a
//! proto3 JSON printer does. The output reads back through [`crate::json`]
//! to the same messages.

use crate::wire;
use alloc::format;
use alloc::string::String;

/// Builds one JSON object.
struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        Obj { out, first: true }
    }

    fn key(&mut self, name: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_string(self.out, name);
        self.out.push(':');
        self.out
    }

    fn raw(&mut self, name: &str, v: &str) {
        self.key(name).push_str(v);
    }

    fn u32(&mut self, name: &str, v: Option<u32>) {
        if let Some(v) = v {
            self.raw(name, &format!("{v}"));
        }
    }

    fn u64(&mut self, name: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.raw(name, &format!("\"{v}\""));
        }
    }

    fn bool(&mut self, name: &str, v: Option<bool>) {
        if let Some(v) = v {
            self.raw(name, if v { "true" } else { "false" });
        }
    }

    fn str(&mut self, name: &str, v: Option<&str>) {
        if let Some(v) = v {
            push_string(self.key(name), v);
        }
    }

    fn text(&mut self, name: &str, v: &str) {
        if !v.is_empty() {
            self.str(name, Some(v));
        }
    }

    fn enumeration(&mut self, name: &str, v: i32, names: &[(i32, &str)]) {
        match names.iter().find(|(x, _)| *x == v) {
            Some((_, n)) => self.str(name, Some(n)),
            None => self.raw(name, &format!("{v}")),
        }
    }

    fn list<T>(&mut self, name: &str, items: &[T], mut f: impl FnMut(&mut String, &T)) {
        if items.is_empty() {
            return;
        }
        let out = self.key(name);
        out.push('[');
        for (i, x) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            f(out, x);
        }
        out.push(']');
    }

    fn end(self) {
        self.out.push('}');
    }
}

/// Appends `s` as a JSON string: quoted, with `"`, `\` and control
/// characters (and DEL) escaped. Shared with tools that print their own
/// JSON reports, so every JSON this workspace writes escapes alike.
pub fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const DEVICE_TYPES: &[(i32, &str)] = &[
    (wire::DEVICE_UNKNOWN, "UNKNOWN"),
    (wire::DEVICE_NVME, "NVME"),
    (wire::DEVICE_VSCSI, "VSCSI"),
];

fn device(out: &mut String, d: &wire::PhysicalDevice) {
    let mut o = Obj::new(out);
    o.enumeration("device_type", d.device_type, DEVICE_TYPES);
    o.text("device_path", &d.device_path);
    if d.sub_device_path != 0 {
        o.u32("sub_device_path", Some(d.sub_device_path));
    }
    o.end();
}

fn lun(out: &mut String, l: &wire::Lun) {
    let mut o = Obj::new(out);
    o.u32("channel", l.channel);
    o.u32("location", Some(l.location));
    o.text("device_id", &l.device_id);
    o.text("vendor_id", &l.vendor_id);
    o.text("product_id", &l.product_id);
    o.text("product_revision_level", &l.product_revision_level);
    o.text("serial_number", &l.serial_number);
    o.text("model_number", &l.model_number);
    o.u32("medium_rotation_rate", l.medium_rotation_rate);
    o.u32("physical_sector_size", l.physical_sector_size);
    o.bool("fua", l.fua);
    o.bool("write_cache", l.write_cache);
    o.bool("odx", l.odx);
    o.bool("disable_thin_provisioning", l.disable_thin_provisioning);
    o.u64("max_transfer_length", l.max_transfer_length);
    if let Some(pd) = &l.physical_devices {
        let out = o.key("physical_devices");
        let mut p = Obj::new(out);
        p.enumeration(
            "type",
            pd.r#type,
            &[
                (wire::BACKING_UNKNOWN, "UNKNOWN"),
                (wire::BACKING_SINGLE, "SINGLE"),
                (wire::BACKING_STRIPED, "STRIPED"),
            ],
        );
        if let Some(d) = &pd.device {
            device(p.key("device"), d);
        }
        p.list("devices", &pd.devices, device);
        p.end();
    }
    if l.is_dvd {
        o.bool("is_dvd", Some(true));
    }
    if l.chunk_size_in_kb != 0 {
        o.u32("chunk_size_in_kb", Some(l.chunk_size_in_kb));
    }
    o.u64("scsi_disk_size_in_bytes", l.scsi_disk_size_in_bytes);
    o.str("ntfs_guid", l.ntfs_guid.as_deref());
    if l.total_logic_size_in_kb != 0 {
        o.u32("total_logic_size_in_kb", Some(l.total_logic_size_in_kb));
    }
    if let Some(t) = l.device_type {
        o.enumeration("device_type", t, DEVICE_TYPES);
    }
    o.str("device_path", l.device_path.as_deref());
    o.u32("sub_device_path", l.sub_device_path);
    o.end();
}

fn base_fields(
    o: &mut Obj<'_>,
    version: i32,
    fixed: Option<&wire::Fixed>,
    dynamic: Option<&wire::Dynamic>,
) {
    o.enumeration(
        "version",
        version,
        &[(wire::VERSION_UNKNOWN, "UNKNOWN"), (wire::VERSION_V1, "V1")],
    );
    if let Some(f) = fixed {
        let mut fo = Obj::new(o.key("fixed"));
        fo.u32("scsi_sub_channels", f.scsi_sub_channels);
        fo.u32("io_ring_size", f.io_ring_size);
        fo.u32("max_bounce_buffer_pages", f.max_bounce_buffer_pages);
        fo.end();
    }
    if let Some(d) = dynamic {
        let mut dobj = Obj::new(o.key("dynamic"));
        dobj.list("storage_controllers", &d.storage_controllers, |out, c| {
            let mut co = Obj::new(out);
            co.text("instance_id", &c.instance_id);
            co.enumeration(
                "protocol",
                c.protocol,
                &[
                    (wire::PROTOCOL_UNKNOWN, "UNKNOWN"),
                    (wire::PROTOCOL_SCSI, "SCSI"),
                    (wire::PROTOCOL_IDE, "IDE"),
                    (wire::PROTOCOL_NVME, "NVME"),
                ],
            );
            co.list("luns", &c.luns, lun);
            co.u32("io_queue_depth", c.io_queue_depth);
            co.end();
        });
        dobj.list("nic_devices", &d.nic_devices, |out, n| {
            let mut no = Obj::new(out);
            no.text("instance_id", &n.instance_id);
            no.str(
                "subordinate_instance_id",
                n.subordinate_instance_id.as_deref(),
            );
            no.u32("max_sub_channels", n.max_sub_channels);
            no.end();
        });
        dobj.end();
    }
}

/// Writes base content as a top-level settings document
/// (`{"version":…,"fixed":…,"dynamic":…}`).
pub fn to_json(base: &wire::Base) -> String {
    let mut out = String::new();
    let mut o = Obj::new(&mut out);
    base_fields(
        &mut o,
        base.version,
        base.fixed.as_ref(),
        base.dynamic.as_ref(),
    );
    o.end();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;

    #[test]
    fn json_out_round_trips_samples() {
        for data in crate::TEST_SAMPLES {
            let base = json::decode_settings(data).unwrap().take_base();
            let text = to_json(&base);
            let again = json::decode_base(text.as_bytes(), "").unwrap();
            assert_eq!(again, base, "{text}");
        }
    }

    #[test]
    fn json_out_escapes_and_shapes() {
        let base = wire::Base {
            version: wire::VERSION_V1,
            fixed: None,
            dynamic: Some(wire::Dynamic {
                storage_controllers: alloc::vec![wire::StorageController {
                    instance_id: String::from("a\"b\\c\u{1}\u{e9}"),
                    protocol: 7,
                    luns: alloc::vec![wire::Lun {
                        max_transfer_length: Some(u64::MAX),
                        ..wire::Lun::default()
                    }],
                    io_queue_depth: None,
                }],
                nic_devices: alloc::vec![],
            }),
        };
        let text = to_json(&base);
        assert_eq!(
            text,
            "{\"version\":\"V1\",\"dynamic\":{\"storage_controllers\":[{\"instance_id\":\
             \"a\\\"b\\\\c\\u0001\u{e9}\",\"protocol\":7,\"luns\":[{\"location\":0,\
             \"max_transfer_length\":\"18446744073709551615\"}]}]}}"
        );
    }
}
