#!/bin/sh
# Installs dynserv-agent on a server and enrolls it. Usage (as root):
#   curl -fsSL http://CONTROL_PLANE:8080/download/install-agent.sh | sh -s -- CONTROL_PLANE_URL QUIC_HOST:PORT TOKEN [NAME]
# or, with the files at hand:
#   sh install-agent.sh http://cp.example:8080 cp.example:4433 dsv1.… [name]
# It downloads the agent binary from the control plane, enrolls once with the token,
# and installs a systemd unit that keeps `dynserv-agent run` going.
set -eu
url=${1:?control plane URL, e.g. http://cp.example:8080}
quic=${2:?fleet address HOST:PORT, e.g. cp.example:4433}
token=${3:?enrollment token dsv1.…}
name=${4:-$(hostname)}
state=/var/lib/dynserv-agent

curl -fsSL "$url/download/dynserv-agent" -o /usr/local/bin/dynserv-agent.new
chmod 0755 /usr/local/bin/dynserv-agent.new
mv /usr/local/bin/dynserv-agent.new /usr/local/bin/dynserv-agent
mkdir -p "$state" && chmod 0700 "$state"
if [ ! -f "$state/agent.crt" ] && [ ! -f "$state/identity.json" ]; then
    /usr/local/bin/dynserv-agent enroll --server "$quic" --token "$token" --state-dir "$state" --name "$name"
fi
cat >/etc/systemd/system/dynserv-agent.service <<UNIT
[Unit]
Description=Dynamic Servers agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/dynserv-agent run --state-dir $state
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now dynserv-agent
echo "dynserv-agent installed and running as $name"
