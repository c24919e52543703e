from connectors.modbus.connector import ModbusConfig, ModbusConnector, Register, decode, encode

__all__ = ["ModbusConfig", "ModbusConnector", "Register", "decode", "encode"]
