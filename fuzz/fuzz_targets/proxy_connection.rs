#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pix_auth_proxy::fuzzing::proxy_connection(data));
