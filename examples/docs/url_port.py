from kbridge import Sandbox

sandbox =Sandbox(template="base")

open_port =3000
url = sandbox.get_hostname(open_port)
print("https://"+ url)

sandbox.close()
