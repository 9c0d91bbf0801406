"""space-vpn-agent: keeps a two-tunnel Heroku Private Space IPsec VPN up through strongSwan."""

__version__ = "0.1.0"
