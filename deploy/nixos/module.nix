# NixOS module: `services.ncps` runs ncps-server (ncps-rs, a Nix binary cache
# proxy) as a hardened systemd service.
#
#   imports = [ ./deploy/nixos/module.nix ];
#   services.ncps = {
#     enable = true;
#     settings.cache.hostname = "cache.example.org";
#     secretKeyFile = "/run/secrets/ncps-secret-key";
#   };
#
# `settings` is ncps's config file (the keys of `ncps-server --config`, e.g.
# `cache.upstream.urls`); secrets stay out of the Nix store: the signing key
# and netrc go in as systemd credentials, passwords in `environmentFile` as
# the binary's environment variables (CACHE_DATABASE_URL, ...).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types literalExpression;
  cfg = config.services.ncps;
  settingsFormat = pkgs.formats.yaml { };
  # Options left null are not written: the server's defaults apply.
  configFile = settingsFormat.generate "ncps.yaml"
    (lib.filterAttrsRecursive (_: value: value != null) cfg.settings);
  port = lib.toInt (lib.last (lib.splitString ":" cfg.settings.server.addr));
in
{
  options.services.ncps = {
    enable = mkEnableOption "ncps-rs, a Nix binary cache proxy";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The ncps-rs package; its `bin/ncps-server` is run.";
    };

    settings = mkOption {
      default = { };
      description = ''
        ncps-server's config file, with ncps's keys (`ncps-server serve --help`
        names each option's environment variable; the key is its dotted
        lower-case form, e.g. `cache.lock.download-lock-ttl`). Environment
        variables from `environmentFile` win over it.
      '';
      example = literalExpression ''
        {
          cache.hostname = "cache.example.org";
          cache.storage.local = null;
          cache.storage.s3 = { bucket = "nix-cache"; endpoint = "https://s3.example.org"; region = "eu-west-1"; };
          cache.database-url = "postgresql:///ncps?host=/run/postgresql";
          cache.redis.addrs = [ "redis.internal:6379" ];
          cache.advertise-url = "http://10.0.0.11:8501";
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          server.addr = mkOption {
            type = types.str;
            default = ":8501";
            description = "Address to listen on; `:8501` means every interface.";
          };
          log.level = mkOption {
            type = types.str;
            default = "info";
            description = "Log level or tracing filter.";
          };
          cache.hostname = mkOption {
            type = types.str;
            default = config.networking.hostName;
            defaultText = literalExpression "config.networking.hostName";
            description = "The cache's name; its generated signing key is named `<hostname>-1`.";
          };
          cache.storage.local = mkOption {
            type = types.nullOr types.str;
            default = "/var/lib/ncps";
            description = ''
              Directory for NARs and, unless `cache.database-url` says
              otherwise, the SQLite database. Set it to null to keep NARs in
              S3 (`cache.storage.s3.bucket`).
            '';
          };
          cache.temp-path = mkOption {
            type = types.str;
            default = "/var/cache/ncps";
            description = "Directory for downloads in progress: room for the largest NARs fetched at once.";
          };
          cache.upstream.urls = mkOption {
            type = types.listOf types.str;
            default = [ "https://cache.nixos.org" ];
            description = "Upstream caches; `?priority=N` sets a priority.";
          };
          cache.upstream.public-keys = mkOption {
            type = types.listOf types.str;
            default = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
            description = "Upstream public keys: with several upstreams, the n-th key is the n-th upstream's.";
          };
        };
      };
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/ncps.env";
      description = ''
        A file of `NAME=value` lines with secrets as the binary's environment
        variables (`CACHE_DATABASE_URL`, `CACHE_STORAGE_S3_SECRET_ACCESS_KEY`,
        `CACHE_REDIS_PASSWORD`), read by systemd; not copied to the store.
      '';
    };

    secretKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/ncps-secret-key";
      description = ''
        The cache's signing key (from `nix-store --generate-binary-cache-key`),
        passed as a systemd credential; not copied to the store. Without it a
        key is generated at first start and kept in the database.
      '';
    };

    netrcFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "A netrc file with logins for private upstreams, passed as a systemd credential.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the port of `settings.server.addr` in the firewall.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.settings.cache.storage.local == null
          || (cfg.settings.cache.storage.s3.bucket or null) == null;
        message = "services.ncps: set settings.cache.storage.local = null to keep NARs in settings.cache.storage.s3.bucket";
      }
    ];

    systemd.services.ncps = {
      description = "ncps-rs Nix binary cache proxy";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      environment =
        lib.optionalAttrs (cfg.secretKeyFile != null) { CACHE_SECRET_KEY_PATH = "%d/secret-key"; }
        // lib.optionalAttrs (cfg.netrcFile != null) { NETRC_FILE = "%d/netrc"; };
      serviceConfig = {
        Type = "exec";
        ExecStart = "${cfg.package}/bin/ncps-server serve --config ${configFile}";
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
        LoadCredential =
          lib.optional (cfg.secretKeyFile != null) "secret-key:${cfg.secretKeyFile}"
          ++ lib.optional (cfg.netrcFile != null) "netrc:${cfg.netrcFile}";

        # SIGTERM drains requests in flight for up to 25 s (SERVER_DRAIN_TIMEOUT).
        KillSignal = "SIGTERM";
        TimeoutStopSec = "35s";
        Restart = "on-failure";
        RestartSec = "5s";
        LimitNOFILE = 65536;

        DynamicUser = true;
        StateDirectory = "ncps";
        StateDirectoryMode = "0750";
        CacheDirectory = "ncps";
        CacheDirectoryMode = "0750";
        UMask = "0077";

        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = true;
        ProtectHostname = true;
        ProtectClock = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        PrivateMounts = true;
        DevicePolicy = "closed";
        KeyringMode = "private";
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged" ];
        SystemCallErrorNumber = "EPERM";
      };
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ port ];
  };
}
