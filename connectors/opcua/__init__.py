from connectors.opcua.connector import NodeSpec, OpcuaConfig, OpcuaConnector, SecurityMode

__all__ = ["NodeSpec", "OpcuaConfig", "OpcuaConnector", "SecurityMode"]
