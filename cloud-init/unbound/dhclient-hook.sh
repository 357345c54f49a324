# Installed by mailstack: /etc/resolv.conf points at the local unbound, which DHCP
# renewals must not overwrite with the provider's shared resolvers.
make_resolv_conf() { :; }
