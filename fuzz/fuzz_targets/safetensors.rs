//! A safetensors file: what `load_file` does after reading the bytes (header, offsets,
//! dtypes), then every tensor converted to f32 as `load_tensors` does. Any error must be an
//! `Err`, never a panic, abort, hang or huge allocation.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((tensors, _metadata)) = ferrotune::io::safetensors::parse_bytes(Path::new("fuzz.safetensors"), data) else {
        return;
    };
    for (name, t) in &tensors {
        let mut out = vec![0f32; t.data.len()];
        let _ = t.convert_into::<f32>(name, &mut out);
    }
});
