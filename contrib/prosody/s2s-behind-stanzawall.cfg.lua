-- Prosody 0.12 behind stanzawall for federation (s2s).
--
-- Put this file next to prosody.cfg.lua and include it in the GLOBAL section (before any
-- VirtualHost), after the lines it overrides:
--     Include "s2s-behind-stanzawall.cfg.lua"
-- and keep mod_dialback loaded ("dialback" in modules_enabled; Debian's default config has it).
-- Addresses: 127.0.0.1:15269 is this server's s2s port (the gateway's s2s listener has
-- backend = "127.0.0.1:15269"); 127.0.0.1@5300 is the local DNS server that answers every
-- _xmpp-server._tcp SRV lookup with the gateway's s2s-out listener (contrib/README-s2s.md).
-- tests/e2e/harness/prosody.py includes this very file, addresses replaced per test site.

-- Inbound: remote servers reach this port only through the gateway, plaintext on loopback.
s2s_ports = { 15269 }
s2s_interfaces = { "127.0.0.1" }
s2s_direct_tls_ports = { }

-- The loopback leg carries no TLS (the gateway does TLS with the world), and peers prove
-- their domains with dialback (XEP-0220), which the gateway checks or answers per domain.
s2s_require_encryption = false
s2s_secure_auth = false

-- Outbound: every DNS lookup (lua-unbound, Prosody's resolver when lua-unbound is
-- installed) goes to the local DNS server only; its wildcard SRV answer sends every remote
-- domain, dialback verification included, to the gateway's s2s-out listener.  No system
-- resolv.conf, no hosts file.  Caution: this applies to ALL of Prosody's DNS lookups.
unbound = { resolvconf = false, hoststxt = false, forward = "127.0.0.1@5300" }
