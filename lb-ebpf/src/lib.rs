// This file exists so that lb-agent can name lb-ebpf as a build-dependency: cargo then
// rebuilds lb-agent when lb-ebpf's sources change (see aya-build).
#![no_std]
