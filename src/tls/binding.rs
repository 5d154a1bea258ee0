//! The `tls-server-end-point` channel binding (RFC 5929 section 4.1): a hash of the server's
//! certificate, with the hash function of the certificate's signature algorithm, where MD5 and
//! SHA-1 are replaced by SHA-256. Only the signature algorithm is read from the DER, with a
//! small reader that never panics.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// Hash functions the binding may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// Signature algorithm OIDs (DER content bytes) and the hash their binding uses.
const ALGORITHMS: &[(&[u8], Hash)] = &[
    // md5WithRSAEncryption, sha1WithRSAEncryption: SHA-256 per RFC 5929.
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], Hash::Sha384),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], Hash::Sha512),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e], Hash::Sha224),
    // ecdsa-with-SHA1, ecdsa-with-SHA224/256/384/512.
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01], Hash::Sha224),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], Hash::Sha384),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04], Hash::Sha512),
    // dsa-with-sha1, dsa-with-sha256.
    (&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03], Hash::Sha256),
    (&[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02], Hash::Sha256),
];

/// The binding data for a DER certificate, or `None` when its signature algorithm names no
/// single hash (Ed25519, RSASSA-PSS, ...) or the DER cannot be read: SCRAM-SHA-256-PLUS is then
/// not offered.
pub fn end_point_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    let hash = signature_hash(cert_der)?;
    Some(match hash {
        Hash::Sha224 => Sha224::digest(cert_der).to_vec(),
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, ... }, ... }
fn signature_hash(der: &[u8]) -> Option<Hash> {
    let (tag, cert, _) = element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = element(cert)?; // tbsCertificate
    let (tag, algorithm, _) = element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = element(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    ALGORITHMS.iter().find(|(o, _)| *o == oid).map(|&(_, h)| h)
}

/// One DER element at the front of `buf`: its tag, its contents and what follows it.
fn element(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(end_point_hash(&p256).unwrap(), Sha256::digest(&p256).to_vec());
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(end_point_hash(&p384).unwrap(), Sha384::digest(&p384).to_vec());
    }

    #[test]
    fn algorithms_without_one_hash_have_no_binding() {
        assert_eq!(end_point_hash(&cert(&rcgen::PKCS_ED25519)), None);
    }

    #[test]
    fn garbage_never_panics() {
        for bad in [&b""[..], &[0x30], &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], &[0x30, 0x80], &[0x30, 0x03, 0x30, 0x01]] {
            assert_eq!(end_point_hash(bad), None);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(0u8..=255, 0..64)) {
            let _ = end_point_hash(&data);
        }
    }
}
