from kbridge import Sandbox

sandbox =Sandbox(template="base")

url = sandbox.get_hostname()
print("https://"+ url)

sandbox.close()
