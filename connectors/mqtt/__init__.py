from connectors.mqtt.connector import Message, MqttConfig, MqttConnector, Topic

__all__ = ["Message", "MqttConfig", "MqttConnector", "Topic"]
