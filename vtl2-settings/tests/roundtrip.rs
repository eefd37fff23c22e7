//! Random valid models survive every output form: postcard, the host's
//! JSON and protobuf written by `json_out` / `protobuf_out`, and an update
//! of themselves.

use parastor_vtl2_settings::model::{
    Backing, Child, ChildAddress, Controller, DiskParams, FixedSettings, Identity, Nic,
    PhysicalDevice, PhysicalDeviceKind, Protocol, Settings,
};
use parastor_vtl2_settings::update::read_update;
use parastor_vtl2_settings::{Guid, json_out, postcard, protobuf_out, read, wire};
use proptest::prelude::*;

fn guid() -> impl Strategy<Value = Guid> {
    any::<[u8; 16]>()
        .prop_filter("non-zero", |b| b.iter().any(|&x| x != 0))
        .prop_map(Guid::from_text_bytes)
}

fn ascii(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(0x20u8..=0x7e, 0..=max)
        .prop_map(|b| b.into_iter().map(char::from).collect())
}

fn device() -> impl Strategy<Value = PhysicalDevice> {
    (any::<bool>(), guid(), any::<u32>()).prop_map(|(nvme, instance_id, sub_device)| {
        PhysicalDevice {
            kind: if nvme {
                PhysicalDeviceKind::Nvme
            } else {
                PhysicalDeviceKind::Vscsi
            },
            instance_id,
            sub_device,
        }
    })
}

fn backing(dvd: bool) -> impl Strategy<Value = Backing> {
    let empty = if dvd { 1 } else { 0 };
    prop_oneof![
        empty => Just(Backing::Empty),
        2 => device().prop_map(Backing::Single),
        1 => (proptest::collection::vec(device(), 2..5), any::<u32>())
            .prop_map(|(devices, chunk_size_kb)| Backing::Striped { devices, chunk_size_kb }),
    ]
}

fn params() -> impl Strategy<Value = DiskParams> {
    (
        any::<(Option<bool>, Option<bool>, Option<bool>, bool, u32)>(),
        any::<(Option<u32>, Option<u64>, Option<u64>)>(),
    )
        .prop_map(
            |((fua, write_cache, odx, unmap, rate), (pss, mtl, size))| DiskParams {
                fua,
                write_cache,
                odx,
                unmap,
                medium_rotation_rate: rate,
                physical_sector_size: pss,
                max_transfer_length: mtl,
                size_override: size,
            },
        )
}

/// A child at `address`; `needs_id` when validation requires a device id.
fn child(address: ChildAddress, dvd_allowed: bool) -> impl Strategy<Value = Child> {
    let dvd = if dvd_allowed {
        any::<bool>().boxed()
    } else {
        Just(false).boxed()
    };
    dvd.prop_flat_map(move |is_dvd| {
        (
            guid(),
            ascii(8),
            ascii(16),
            ascii(4),
            ".{0,12}",
            ".{0,12}",
            params(),
            backing(is_dvd),
            proptest::option::of(guid()),
        )
            .prop_map(
                move |(id, v, p, r, serial, model, params, backing, ntfs_guid)| Child {
                    address,
                    identity: Identity {
                        device_id: Some(id),
                        vendor_id: v,
                        product_id: p,
                        product_revision_level: r,
                        serial_number: serial,
                        model_number: model,
                    },
                    params,
                    is_dvd,
                    backing,
                    ntfs_guid,
                },
            )
    })
}

fn children(protocol: Protocol) -> BoxedStrategy<Vec<Child>> {
    let addresses: BoxedStrategy<Vec<ChildAddress>> = match protocol {
        Protocol::Scsi => proptest::sample::subsequence((0u8..64).collect::<Vec<_>>(), 0..4)
            .prop_map(|v| v.into_iter().map(ChildAddress::ScsiLun).collect())
            .boxed(),
        Protocol::Ide => proptest::sample::subsequence(vec![(0, 0), (0, 1), (1, 0), (1, 1)], 0..4)
            .prop_map(|v| {
                v.into_iter()
                    .map(|(channel, drive)| ChildAddress::Ide { channel, drive })
                    .collect()
            })
            .boxed(),
        Protocol::Nvme => proptest::collection::btree_set(1u32..0xFFFF_FFFF, 0..4)
            .prop_map(|v| v.into_iter().map(ChildAddress::NvmeNsid).collect())
            .boxed(),
    };
    addresses
        .prop_flat_map(move |addrs| {
            addrs
                .into_iter()
                .map(|a| child(a, protocol != Protocol::Nvme))
                .collect::<Vec<_>>()
        })
        .boxed()
}

fn settings() -> impl Strategy<Value = Settings> {
    let controller = |protocol: Protocol| {
        (
            guid(),
            proptest::option::of(any::<u32>()),
            children(protocol),
        )
            .prop_map(move |(instance_id, io_queue_depth, children)| Controller {
                instance_id,
                protocol,
                io_queue_depth,
                children,
            })
    };
    (
        any::<(u32, u32, u32)>(),
        proptest::collection::vec(controller(Protocol::Scsi), 0..3),
        proptest::option::of(controller(Protocol::Ide)),
        proptest::collection::vec(controller(Protocol::Nvme), 0..3),
        proptest::collection::vec(
            (
                guid(),
                proptest::option::of(guid()),
                proptest::option::of(any::<u32>()),
            ),
            0..3,
        ),
    )
        .prop_map(|((a, b, c), scsi, ide, nvme, nics)| {
            let mut controllers: Vec<Controller> = scsi;
            controllers.extend(ide);
            controllers.extend(nvme);
            Settings {
                fixed: FixedSettings {
                    scsi_sub_channels: a,
                    io_ring_size: b,
                    max_bounce_buffer_pages: c,
                },
                controllers,
                nics: nics
                    .into_iter()
                    .map(
                        |(instance_id, subordinate_instance_id, max_sub_channels)| Nic {
                            instance_id,
                            subordinate_instance_id,
                            max_sub_channels,
                        },
                    )
                    .collect(),
            }
        })
        .prop_filter("unique controller ids", |s| {
            let mut ids: Vec<_> = s.controllers.iter().map(|c| c.instance_id).collect();
            ids.sort();
            ids.dedup();
            ids.len() == s.controllers.len()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip_valid_models(s in settings()) {
        let blob = postcard::encode(&s);
        prop_assert_eq!(&read(&blob).unwrap(), &s);
        let base = wire::base_from_model(&s);
        let text = json_out::to_json(&base);
        prop_assert_eq!(&read(text.as_bytes()).unwrap(), &s);
        prop_assert_eq!(&read(&protobuf_out::to_protobuf(&base)).unwrap(), &s);
        let (again, changes) = read_update(&blob, &s).unwrap();
        prop_assert_eq!(&again, &s);
        prop_assert!(changes.changes.is_empty());
    }
}
