# ncps-rs from this repository: ncps-server and ncps-cli. Needs a nixpkgs
# whose Rust is 1.95 or later (the workspace's rust-version).
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "ncps-rs";
  version = "0.1.0";

  src = lib.cleanSourceWith {
    src = ../..;
    filter = path: type:
      let rel = lib.removePrefix (toString ../.. + "/") (toString path);
      in !(lib.elem rel [ "target" ".git" "deploy" "docs" ".ci" ]);
  };
  cargoLock.lockFile = ../../Cargo.lock;
  cargoBuildFlags = [ "-p" "ncps-server" "-p" "ncps-cli" ];

  # The test suite needs Nix, PostgreSQL, MariaDB, Redis and an S3 server.
  doCheck = false;

  meta = {
    description = "A Nix binary cache proxy (a Rust reimplementation of ncps)";
    license = lib.licenses.mit;
    mainProgram = "ncps-server";
  };
}
