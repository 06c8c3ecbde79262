from kbridge import CodeInterpreter

code ="print('Hello, World!')"

sandbox = CodeInterpreter.create()
execution = sandbox.notebook.exec_cell(code)
