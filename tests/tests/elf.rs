//! The object the daemon embeds defines every map and the program that
//! lb-common names, in the sections aya expects; so do the benchmark's
//! reference objects for the names bench-ebpf gives them. No root needed.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

#[test]
fn object_defines_every_name_lb_common_declares() {
    let elf = object::File::parse(lb_user::XDP_OBJECT).expect("embedded XDP object parses as ELF");
    assert_eq!(elf.architecture(), object::Architecture::Bpf);
    let section_of = |name: &str| {
        elf.symbols()
            .find(|s| s.name() == Ok(name))
            .and_then(|s| s.section_index())
            .and_then(|i| elf.section_by_index(i).ok())
            .and_then(|s| s.name().ok().map(str::to_owned))
    };
    for map in lb_common::map_names::ALL {
        assert!(
            map.len() <= 15,
            "map name {map} is longer than the kernel keeps"
        );
        assert_eq!(section_of(map).as_deref(), Some("maps"), "map {map}");
    }
    assert_eq!(
        section_of(lb_common::PROGRAM_NAME).as_deref(),
        Some("xdp"),
        "program {}",
        lb_common::PROGRAM_NAME
    );
    assert!(elf.section_by_name(".BTF").is_some(), "object carries BTF");
    let license = elf.section_by_name("license").expect("license section");
    assert_eq!(license.data().unwrap(), b"Dual MIT/GPL\0");
}

#[test]
fn object_has_no_undeclared_maps() {
    let elf = object::File::parse(lb_user::XDP_OBJECT).unwrap();
    let maps = elf.section_by_name("maps").expect("maps section");
    let names: Vec<&str> = elf
        .symbols()
        .filter(|s| s.section_index() == Some(maps.index()))
        .filter_map(|s| s.name().ok())
        .collect();
    for n in &names {
        assert!(
            lb_common::map_names::ALL.contains(n),
            "map {n} not declared in lb-common"
        );
    }
    assert_eq!(names.len(), lb_common::map_names::ALL.len());
}

/// Each benchmark reference object defines the program and exactly the maps
/// that bench-ebpf names for it (the programs spell map names as literals).
#[test]
fn reference_objects_define_the_names_bench_ebpf_declares() {
    use bench_ebpf::map_names;
    use stickylb_tests::bench::objects::Reference;

    let cases: [(Reference, &[&str]); 5] = [
        (Reference::FloorPass, &[]),
        (Reference::FloorFwd, &[]),
        (Reference::FloorEncap, &[]),
        (Reference::Sink, &[map_names::SINK_COUNT]),
        (Reference::Gen, &[map_names::GEN_CONFIG, map_names::GEN_SEQ]),
    ];
    for (which, want_maps) in cases {
        let elf = object::File::parse(which.object()).expect("reference object parses as ELF");
        assert_eq!(elf.architecture(), object::Architecture::Bpf);
        let in_section = |section: &str| -> Vec<&str> {
            let Some(s) = elf.section_by_name(section) else {
                return Vec::new();
            };
            elf.symbols()
                .filter(|sym| sym.section_index() == Some(s.index()))
                .filter_map(|sym| sym.name().ok())
                .collect()
        };
        assert!(
            in_section("xdp").contains(&which.program_name()),
            "{which:?}: program {}",
            which.program_name()
        );
        let mut maps = in_section("maps");
        maps.sort_unstable();
        let mut want = want_maps.to_vec();
        want.sort_unstable();
        assert_eq!(maps, want, "{which:?}: maps");
        assert!(
            want.iter().all(|m| m.len() <= 15),
            "{which:?}: map name too long"
        );
    }
}
