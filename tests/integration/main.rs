mod decode_cli;
