//! Unit tests of disk specs and images.

use super::*;

#[test]
fn specs_parse() {
    let s: DiskSpec = "/tmp/a.img".parse().unwrap();
    assert_eq!(s.path, PathBuf::from("/tmp/a.img"));
    assert!(!s.read_only);
    assert!("/tmp/a.img,readonly".parse::<DiskSpec>().unwrap().read_only);
    for bad in ["", ",readonly", "a,rw", "a,readonly,ro"] {
        let e = bad.parse::<DiskSpec>().unwrap_err().to_string();
        assert!(e.starts_with("bad --disk"), "{e}");
    }
}

#[test]
fn images_are_checked() {
    let dir = std::env::temp_dir().join(format!("ftvm-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = |p: &Path, ro| DiskSpec {
        path: p.to_owned(),
        read_only: ro,
    };
    assert!(matches!(
        FileBackend::open(&spec(&dir, false)),
        Err(DiskError::NotAFile { .. })
    ));
    assert!(matches!(
        FileBackend::open(&spec(&dir.join("none"), false)),
        Err(DiskError::Open { .. })
    ));
    let odd = dir.join("odd.img");
    std::fs::write(&odd, [0u8; 100]).unwrap();
    assert!(matches!(
        FileBackend::open(&spec(&odd, false)),
        Err(DiskError::Unaligned { len: 100, .. })
    ));
    let img = dir.join("a.img");
    std::fs::write(&img, vec![0u8; 1024]).unwrap();
    let mut b = FileBackend::open(&spec(&img, false)).unwrap();
    b.write_at(512, &[7u8; 512]).unwrap();
    let crc = b.io_crc();
    assert_ne!(crc, 0);
    let mut buf = [0u8; 512];
    b.read_at(512, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 512]);
    assert!(b.read_at(1000, &mut buf).is_err());
    assert!(b.read_at(u64::MAX, &mut buf).is_err());
    assert_ne!(b.io_crc(), crc);
    let (len, _) = image_sum(&img).unwrap();
    assert_eq!(len, 1024);
    // A replayer's comparison with the recorder's CRC at a checkpoint is counted.
    assert!(b.check_against(b.io_crc()));
    assert!(!b.check_against(!b.io_crc()));
    assert_eq!(b.crc_checks(), (1, 1));
    std::fs::remove_dir_all(&dir).unwrap();
}
