"""Publishes through Twinlake's MQTT endpoint with Eclipse Paho, and prints what it heard.

Usage: paho_publish.py PORT VERSION (3 or 5) GATEWAY

Publishes 20 measurements at QoS 1 and 20 at QoS 2 as gateway GATEWAY (its client id), each
waited for until acknowledged, then one under another gateway's prefix at QoS 1, and prints one
JSON line: the acknowledged counts and, for MQTT 5, the reason code of the refused publish.
"""

import json
import sys
import threading

import paho.mqtt.client as mqtt


def main() -> None:
    port, version, gateway = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=gateway, protocol=protocol
    )
    refused = {}
    done = threading.Event()

    def on_publish(_client, _userdata, mid, reason_code, _properties):
        if mid in refused:
            refused[mid] = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    acked = {1: 0, 2: 0}
    for qos in (1, 2):
        for n in range(20):
            payload = json.dumps({"n": n, "qos": qos})
            info = client.publish("te/device/main///m/paho", payload, qos=qos)
            info.wait_for_publish(timeout=10)
            if info.is_published():
                acked[qos] += 1
    reason = None
    if version == "5":
        info = client.publish("twinlake/someone-else/te/device/main///m/paho", "{}", qos=1)
        refused[info.mid] = None
        done.wait(timeout=10)
        reason = refused[info.mid]
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"qos1": acked[1], "qos2": acked[2], "refused_reason": reason}))


main()
