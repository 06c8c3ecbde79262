from kbridge import Sandbox

sandbox =Sandbox(template="base")

# Create a new directory '/dir'
sandbox.filesystem.make_dir("/dir")

sandbox.close()
