//! Makes a throwaway certificate authority and a server certificate signed
//! by it, for trying TLS on one machine (the security benchmark uses it):
//!
//!   cargo run --example test_certs -- DIR [NAME...]
//!
//! writes DIR/ca.crt, DIR/server.crt and DIR/server.key; the server
//! certificate names NAME... (default: 127.0.0.1 and localhost). Not for
//! production: use your own CA or cert-manager there.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: test_certs DIR [NAME...]");
        std::process::exit(2);
    };
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        names = vec!["127.0.0.1".into(), "localhost".into()];
    }
    if let Err(e) = write(std::path::Path::new(&dir), names) {
        eprintln!("test_certs: {e}");
        std::process::exit(1);
    }
}

fn write(dir: &std::path::Path, names: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "KeyDB throwaway CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let server = CertificateParams::new(names)?.signed_by(&key, &ca)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(dir.join("server.crt"), server.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}
