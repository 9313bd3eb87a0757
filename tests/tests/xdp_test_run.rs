//! The XDP program embedded in lb-agent loads into this kernel (the verifier accepts it)
//! and, run on a crafted packet with BPF_PROG_TEST_RUN, passes a packet that is for no
//! Service, unchanged. Needs root and bpffs (`cargo xtask setup`).
use std::path::PathBuf;

use aya::EbpfLoader;
use aya::programs::{TestRun as _, TestRunOptions, Xdp};

const XDP_PASS: u32 = 2;

/// Ethernet + IPv4 + UDP from 198.51.100.1:1234 to 192.0.2.1:9 (documentation ranges: no
/// Service has them), 4 bytes of payload, checksums valid.
fn udp_packet() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend([0x02, 0, 0, 0, 0, 0x02]); // dst MAC
    p.extend([0x02, 0, 0, 0, 0, 0x01]); // src MAC
    p.extend([0x08, 0x00]); // IPv4
    let mut ip = vec![
        0x45, 0, 0, 32, // version/IHL, TOS, total length 20 + 8 + 4
        0x12, 0x34, 0x40, 0, // id, DF
        64, 17, 0, 0, // TTL, UDP, checksum (below)
        198, 51, 100, 1, // src
        192, 0, 2, 1, // dst
    ];
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend(&ip);
    p.extend([0x04, 0xd2, 0x00, 0x09, 0x00, 12, 0x00, 0x00]); // ports, length, no checksum
    p.extend(b"ping");
    p
}

use lb_common::internet_checksum as checksum;

/// A bpffs directory for maps the object may pin, removed at the end (named like sandbox
/// directories so that a crashed run's is swept).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn embedded_xdp_program_passes_a_non_service_packet() {
    lb_tests::sandbox::preflight().expect("preflight");
    lb_tests::sandbox::require_bpffs().expect("bpffs");
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/{}{}xprogtest",
        lb_tests::netns::PREFIX,
        std::process::id()
    )));
    std::fs::create_dir_all(&pins.0).expect("create a directory in bpffs");
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.0)
        .load(lb_agent::bpf::object())
        .expect("load the embedded eBPF object");
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    let packet = udp_packet();
    let mut ran = Vec::new();
    for name in names {
        let Ok(xdp) = <&mut Xdp>::try_from(ebpf.program_mut(&name).expect("listed")) else {
            continue;
        };
        xdp.load()
            .unwrap_or_else(|e| panic!("the verifier rejects {name}: {e:?}"));
        let mut out = vec![0u8; 1600];
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(&packet),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name}: {e:?}"));
        assert_eq!(
            result.return_value, XDP_PASS,
            "{name} must pass a non-service packet"
        );
        assert_eq!(
            &out[..result.data_size_out as usize],
            &packet[..],
            "{name} must not change a non-service packet"
        );
        ran.push(name);
    }
    assert!(!ran.is_empty(), "the embedded object has no XDP program");
}
